"""What the API app's lifespan does to the process besides opening its clients."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from gateway_api.app import create_app
from shared.adapters.config import StandardConfig
from shared.settings import Settings, SettingsError
from shared.signing import generate_secret


@pytest.fixture
def default_gc_thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


@pytest.mark.usefixtures("default_gc_thresholds")
async def test_startup_raises_only_the_young_gc_threshold(
    client_for: Callable[..., Awaitable[httpx.AsyncClient]],
) -> None:
    client = await client_for()

    assert (await client.get("/health/live")).status_code == 200
    assert gc.get_threshold() == (5_000, 10, 10)


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"sources": {"Acme": StandardConfig(secrets=(generate_secret(),))}}, "GATEWAY_SOURCES"),
        ({"sources": {"acme": StandardConfig(secrets=("whsec_!",))}}, "GATEWAY_SOURCES"),
        ({"downstream_url": "http://127.0.0.1:9/hook"}, "GATEWAY_DOWNSTREAM_SECRET"),
        ({"lease_s": 30.0, "job_timeout_s": 30.0}, "GATEWAY_LEASE_S"),
    ],
)
def test_an_app_built_from_settings_in_code_runs_the_settings_checks(
    overrides: dict[str, Any], variable: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        create_app(Settings(**overrides))
