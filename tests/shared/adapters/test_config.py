"""Source configuration: decoded into one adapter's struct, or refused naming source and key."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from shared.adapters.config import (
    EasyPostConfig,
    GenericConfig,
    HexConfig,
    SourceConfigError,
    StandardConfig,
    UpsConfig,
    parse_source_config,
)
from shared.adapters.registry import ADAPTERS, build_adapter
from tests.shared.adapters.carriers import DHL_STYLE_CONFIG, FEDEX_STYLE_CONFIG, SECRET

WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()


def refused(raw: Any) -> str:
    with pytest.raises(SourceConfigError) as raised:
        parse_source_config("acme-eu", raw)
    return str(raised.value)


def test_adapter_defaults_to_standard() -> None:
    assert isinstance(parse_source_config("acme", {"secrets": [WHSEC]}), StandardConfig)


@pytest.mark.parametrize(("scheme", "kind"), [("standard", StandardConfig), ("hex", HexConfig)])
def test_legacy_scheme_names_the_adapter(scheme: str, kind: type) -> None:
    secret = WHSEC if scheme == "standard" else SECRET
    config = parse_source_config("acme", {"scheme": scheme, "secrets": [secret]})

    assert isinstance(config, kind)
    assert isinstance(
        parse_source_config("acme", {"scheme": scheme, "adapter": scheme, "secrets": [secret]}),
        kind,
    )


def test_scheme_contradicting_adapter_is_refused() -> None:
    message = refused({"scheme": "hex", "adapter": "easypost", "secrets": [SECRET]})
    assert message.startswith("acme-eu.scheme: ")


def test_scheme_of_a_carrier_is_refused() -> None:
    assert refused({"scheme": "ups", "secrets": [SECRET]}).startswith("acme-eu.scheme: ")


def test_unknown_adapter_is_refused_listing_the_known_ones() -> None:
    message = refused({"adapter": "fedex", "secrets": [SECRET]})
    assert message.startswith("acme-eu.adapter: unknown adapter 'fedex'")
    assert "easypost" in message
    assert "generic" in message


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"adapter": "easypost"}, "acme-eu: Object missing required field `secrets`"),
        ({"adapter": "easypost", "secrets": []}, "acme-eu.secrets: "),
        ({"adapter": "easypost", "secrets": "abc"}, "acme-eu.secrets: "),
        ({"adapter": "easypost", "secrets": [SECRET], "tolerance": 5}, "acme-eu: "),
        ({"adapter": "ups", "secrets": [SECRET, "short"]}, "acme-eu.secrets[1]: "),
        ({"adapter": "standard", "secrets": ["not-whsec"]}, "acme-eu.secrets[0]: "),
        ({"adapter": "hex", "secrets": ["short"]}, "acme-eu.secrets[0]: "),
        (
            {"adapter": "shippo", "secrets": [SECRET], "statuses": {"X": "lost"}},
            "acme-eu.statuses.X: 'lost' is not an event type",
        ),
        ({"adapter": "shippo", "secrets": [SECRET], "statuses": {"X": 3}}, "acme-eu.statuses.X: "),
        ({"adapter": "standard", "secrets": [WHSEC], "statuses": {}}, "acme-eu: "),
    ],
)
def test_invalid_configuration_names_the_source_and_the_key(raw: Any, key: str) -> None:
    assert refused(raw).startswith(key)


def test_configuration_that_is_not_an_object_is_refused() -> None:
    assert refused(["secrets"]).startswith("acme-eu: expected an object")


def test_statuses_accept_the_status_or_the_full_event_type() -> None:
    config = parse_source_config(
        "acme",
        {
            "adapter": "easypost",
            "secrets": [SECRET],
            "statuses": {"a": "picked_up", "b": "shipment.returned"},
        },
    )

    assert isinstance(config, EasyPostConfig)
    assert config.statuses == {"a": "picked_up", "b": "shipment.returned"}


def test_both_generic_examples_are_valid_configuration() -> None:
    for raw in (FEDEX_STYLE_CONFIG, DHL_STYLE_CONFIG):
        assert isinstance(parse_source_config("acme", raw), GenericConfig)


def test_generic_header_is_matched_in_lower_case() -> None:
    config = parse_source_config("acme", DHL_STYLE_CONFIG)

    assert isinstance(config, GenericConfig)
    assert config.signature.header == "dhl-api-key"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"signature": {"kind": "rsa", "header": "x"}}, "acme-eu.signature.kind: "),
        ({"signature": {"kind": "token", "header": "bad header"}}, "acme-eu.signature.header: "),
        (
            {"signature": {"kind": "token", "header": "x", "prefix": "p"}},
            "acme-eu.signature.prefix: ",
        ),
        (
            {"signature": {"kind": "hmac-sha256", "header": "x", "encoding": "b32"}},
            "acme-eu.signature.encoding: ",
        ),
        (
            {"fields": {"tracking_number": "trackingNumber", "status": "/s", "occurred_at": "/t"}},
            "acme-eu.fields.tracking_number: ",
        ),
        (
            {"fields": {"tracking_number": "/t", "status": "/s~2", "occurred_at": "/t"}},
            "acme-eu.fields.status: ",
        ),
        ({"fields": {"tracking_number": "/t", "status": "/s"}}, "acme-eu.fields: "),
        ({"statuses": {}}, "acme-eu.statuses: a generic source needs"),
        ({"signature": None}, "acme-eu.signature: "),
    ],
)
def test_invalid_generic_configuration_names_the_key(change: dict[str, Any], key: str) -> None:
    assert refused({**FEDEX_STYLE_CONFIG, **change}).startswith(key)


def test_repr_never_shows_a_secret() -> None:
    config = parse_source_config("acme", {"adapter": "ups", "secrets": [SECRET]})

    assert isinstance(config, UpsConfig)
    assert SECRET not in repr(config)
    assert "redacted" in repr(config)


def test_every_configuration_type_has_an_adapter() -> None:
    raws: list[dict[str, Any]] = [
        {"secrets": [WHSEC]},
        {"adapter": "hex", "secrets": [SECRET]},
        *(
            {"adapter": kind, "secrets": [SECRET]}
            for kind in ("easypost", "aftership", "shopify", "ups", "shippo")
        ),
        FEDEX_STYLE_CONFIG,
    ]
    kinds = set()
    for raw in raws:
        adapter = build_adapter(parse_source_config("acme", raw), tolerance_s=300)
        kinds.add(adapter.kind)

    assert len(kinds) == len(ADAPTERS) == 8
