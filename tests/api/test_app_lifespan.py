"""What the API app's lifespan does to the process besides opening its clients."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest


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
