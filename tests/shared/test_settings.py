"""Settings are read once from GATEWAY_* variables and name the variable they reject."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.adapters.config import StandardConfig
from shared.settings import (
    Settings,
    SettingsError,
    check_settings,
    load_settings,
    redact_url,
)
from shared.signing import generate_secret
from tests.plugins.worker import WorkerPool


def test_defaults_match_the_spec() -> None:
    settings = load_settings({})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.mongo_url == "mongodb://127.0.0.1:27017"
    assert settings.mongo_db == "gateway"
    assert settings.queue_name == "gateway:events"
    assert settings.signature_tolerance_s == 300
    assert settings.max_body_bytes == 262_144
    assert settings.max_attempts == 6
    assert (settings.backoff_base_s, settings.backoff_multiplier, settings.backoff_cap_s) == (
        1.0,
        4.0,
        300.0,
    )
    assert settings.keep_result_s == 86_400
    assert settings.dedupe_ttl_s == 30 * 86_400
    assert settings.sources == {}


def test_numbers_are_decoded_from_strings() -> None:
    settings = load_settings({"GATEWAY_MAX_ATTEMPTS": "3", "GATEWAY_BACKOFF_BASE_S": "0.5"})
    assert settings.max_attempts == 3
    assert settings.backoff_base_s == 0.5


def test_empty_variable_counts_as_unset() -> None:
    assert load_settings({"GATEWAY_MAX_ATTEMPTS": ""}).max_attempts == 6


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEWAY_MAX_ATTEMPTS", "zero"),
        ("GATEWAY_MAX_ATTEMPTS", "0"),
        ("GATEWAY_BACKOFF_MULTIPLIER", "0.5"),
        ("GATEWAY_MAX_BODY_BYTES", "-1"),
        ("GATEWAY_LOG_FORMAT", "xml"),
        ("GATEWAY_LOG_LEVEL", "LOUD"),
        ("GATEWAY_PORT", "70000"),
    ],
)
def test_invalid_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}: "):
        load_settings({variable: value})


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("GATEWAY_LOG_LEVEL", "warning", "log_level", "WARNING"),
        ("GATEWAY_LOG_LEVEL", "WARNING", "log_level", "WARNING"),
        ("GATEWAY_LOG_LEVEL", "Debug", "log_level", "DEBUG"),
        ("GATEWAY_LOG_FORMAT", "CONSOLE", "log_format", "console"),
        ("GATEWAY_LOG_FORMAT", "Json", "log_format", "json"),
    ],
)
def test_enumerated_values_are_case_insensitive(
    variable: str, value: str, field: str, expected: str
) -> None:
    assert getattr(load_settings({variable: value}), field) == expected


def test_a_source_scheme_is_case_insensitive() -> None:
    sources = {"old": {"secrets": ["x" * 16], "scheme": "HEX"}}
    settings = load_settings({"GATEWAY_SOURCES": json.dumps(sources)})
    assert settings.sources["old"].kind == "hex"
    assert settings.sources["old"].hmac_keys() == (b"x" * 16,)


def test_an_unknown_enumerated_value_lists_the_allowed_ones() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"GATEWAY_LOG_LEVEL": "loud"})
    assert str(raised.value) == (
        "GATEWAY_LOG_LEVEL: Invalid enum value 'loud' "
        "(expected one of DEBUG, ERROR, INFO, WARNING, in any case)"
    )
    with pytest.raises(
        SettingsError,
        match=r"^GATEWAY_SOURCES: acme\.scheme: must be 'standard' or 'hex', got 'md5'",
    ):
        load_settings({"GATEWAY_SOURCES": '{"acme": {"secrets": ["x"], "scheme": "md5"}}'})


def test_cross_field_checks_run_on_settings_built_directly() -> None:
    check_settings(Settings())
    with pytest.raises(SettingsError, match=r"^GATEWAY_LEASE_S: must exceed GATEWAY_JOB_TIMEOUT_S"):
        check_settings(Settings(lease_s=30.0, job_timeout_s=30.0))
    with pytest.raises(SettingsError, match=r"^GATEWAY_DOWNSTREAM_SECRET: required"):
        check_settings(Settings(downstream_url="http://127.0.0.1:9/hook"))
    with pytest.raises(SettingsError, match=r"^GATEWAY_SOURCES: source id 'Acme' must match"):
        check_settings(Settings(sources={"Acme": StandardConfig(secrets=(generate_secret(),))}))


def test_a_lease_not_longer_than_the_job_timeout_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_LEASE_S: must exceed"):
        load_settings({"GATEWAY_LEASE_S": "10", "GATEWAY_JOB_TIMEOUT_S": "10"})


def test_sources_are_read_from_json() -> None:
    secret = generate_secret()
    settings = load_settings(
        {
            "GATEWAY_SOURCES": json.dumps(
                {"acme": {"secrets": [secret]}, "old": {"secrets": ["x" * 16], "scheme": "hex"}}
            )
        }
    )
    assert settings.sources["acme"] == StandardConfig(secrets=(secret,))
    assert settings.sources["old"].kind == "hex"
    assert settings.sources["old"].hmac_keys() == (b"x" * 16,)


def test_sources_are_read_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "sources.json"
    path.write_text(json.dumps({"acme": {"secrets": [generate_secret()]}}))
    assert set(load_settings({"GATEWAY_SOURCES_FILE": str(path)}).sources) == {"acme"}


def test_sources_inline_and_file_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "sources.json"
    path.write_text("{}")
    with pytest.raises(SettingsError, match=r"^GATEWAY_SOURCES: set either"):
        load_settings({"GATEWAY_SOURCES": "{}", "GATEWAY_SOURCES_FILE": str(path)})


def test_unreadable_sources_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_SOURCES_FILE: cannot read"):
        load_settings({"GATEWAY_SOURCES_FILE": str(tmp_path / "missing.json")})


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ("not json", "GATEWAY_SOURCES: "),
        ('{"acme": {"secrets": []}}', "GATEWAY_SOURCES: "),
        ('{"acme": {"secrets": ["whsec_%%%"]}}', r"acme\.secrets\[0\]: secret is not valid base64"),
        (
            '{"acme": {"secrets": ["plain"]}}',
            r"acme\.secrets\[0\]: secret must start with 'whsec_'",
        ),
        ('{"acme": {"secrets": ["whsec_c2hvcnQ="]}}', "at least 16 bytes"),
        ('{"Acme": {"secrets": ["whsec_c2hvcnQ="]}}', "source id 'Acme' must match"),
        ('{"acme": {"secrets": ["short"], "scheme": "hex"}}', "at least 16 characters"),
        ('{"acme": {"secrets": ["x"], "scheme": "md5"}}', "GATEWAY_SOURCES: "),
    ],
)
def test_invalid_sources_are_refused_with_the_reason(sources: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({"GATEWAY_SOURCES": sources})


def test_secret_values_never_appear_in_error_messages() -> None:
    secret = "whsec_" + "A" * 10 + "%"
    with pytest.raises(SettingsError) as raised:
        load_settings({"GATEWAY_SOURCES": json.dumps({"acme": {"secrets": [secret]}})})
    assert secret not in str(raised.value)


def test_downstream_url_requires_a_valid_secret() -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_DOWNSTREAM_SECRET: required"):
        load_settings({"GATEWAY_DOWNSTREAM_URL": "http://127.0.0.1:9/hook"})
    with pytest.raises(SettingsError, match=r"^GATEWAY_DOWNSTREAM_SECRET: "):
        load_settings(
            {"GATEWAY_DOWNSTREAM_URL": "http://127.0.0.1:9/hook", "GATEWAY_DOWNSTREAM_SECRET": "x"}
        )


def test_repr_hides_secrets_and_passwords() -> None:
    secret = generate_secret()
    settings = Settings(
        redis_url="redis://:hunter2@redis:6379/0",
        mongo_url="mongodb://app:hunter2@mongo/",
        sources={"acme": StandardConfig(secrets=(secret,))},
        admin_token="token-value",
    )
    shown = repr(settings)
    assert "hunter2" not in shown
    assert secret not in shown
    assert "token-value" not in shown
    assert secret not in repr(settings.sources["acme"])


def test_redact_url_keeps_everything_but_the_password() -> None:
    assert redact_url("redis://user:pw@host:1/0") == "redis://user:***@host:1/0"
    assert redact_url("redis://host:1/0") == "redis://host:1/0"


@pytest.mark.slow
async def test_a_worker_starts_with_a_lower_case_log_level_and_applies_it(
    worker_pool: WorkerPool, worker_settings: Callable[..., Settings]
) -> None:
    [worker] = await worker_pool.start(worker_settings(), 1, GATEWAY_LOG_LEVEL="warning")
    assert worker.process.poll() is None
    worker_pool.stop_all()
    assert worker.process.returncode == 0
    levels = {line.get("level") for line in worker.log_lines()}
    assert levels <= {"warning", "error", "critical"}, levels
