"""The HA settings: Sentinel addresses, acknowledging replicas, Mongo write concern."""

from __future__ import annotations

import pytest

from shared.settings import (
    SettingsError,
    load_settings,
    mongo_write_concern_w,
    sentinel_addresses,
)


def test_sentinels_parse_into_host_port_pairs() -> None:
    settings = load_settings(
        {
            "GATEWAY_REDIS_SENTINELS": "s1:26379, 10.0.0.2:26380,[::1]:26381",
            "GATEWAY_ACK_REPLICAS": "1",
        }
    )
    assert sentinel_addresses(settings) == (("s1", 26379), ("10.0.0.2", 26380), ("::1", 26381))
    assert settings.redis_sentinel_master == "mymaster"
    assert settings.ack_replicas == 1


def test_no_sentinels_means_a_single_redis() -> None:
    assert sentinel_addresses(load_settings({})) == ()


@pytest.mark.parametrize("value", ["s1", "s1:", ":26379", "s1:port", "s1:70000"])
def test_a_malformed_sentinel_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_REDIS_SENTINELS: expected host:port"):
        load_settings({"GATEWAY_REDIS_SENTINELS": value})


def test_negative_ack_replicas_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_ACK_REPLICAS: "):
        load_settings({"GATEWAY_ACK_REPLICAS": "-1"})


@pytest.mark.parametrize(
    ("value", "w"), [("majority", "majority"), ("MAJORITY", "majority"), ("2", 2)]
)
def test_write_concern_reads_majority_or_a_count(value: str, w: int | str) -> None:
    assert mongo_write_concern_w(load_settings({"GATEWAY_MONGO_WRITE_CONCERN": value})) == w


def test_write_concern_defaults_to_majority() -> None:
    assert mongo_write_concern_w(load_settings({})) == "majority"


@pytest.mark.parametrize("value", ["0", "all", "-1"])
def test_an_unsafe_or_unknown_write_concern_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_MONGO_WRITE_CONCERN: expected 'majority'"):
        load_settings({"GATEWAY_MONGO_WRITE_CONCERN": value})
