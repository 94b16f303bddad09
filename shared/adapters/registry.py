"""Every built-in adapter by name, and the one way to build a source's adapter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from shared.adapters.aftership import AfterShipAdapter
from shared.adapters.base import Adapter
from shared.adapters.config import (
    AfterShipConfig,
    EasyPostConfig,
    GenericConfig,
    HexConfig,
    ShippoConfig,
    ShopifyConfig,
    SourceAdapterConfig,
    StandardConfig,
    UpsConfig,
)
from shared.adapters.easypost import EasyPostAdapter
from shared.adapters.generic import GenericAdapter
from shared.adapters.hex import HexAdapter
from shared.adapters.shippo import ShippoAdapter
from shared.adapters.shopify import ShopifyAdapter
from shared.adapters.standard import StandardAdapter
from shared.adapters.ups import UpsAdapter

__all__ = ["ADAPTERS", "build_adapter"]

ADAPTERS: Final[Mapping[type[SourceAdapterConfig], type[Adapter]]] = {
    StandardConfig: StandardAdapter,
    HexConfig: HexAdapter,
    EasyPostConfig: EasyPostAdapter,
    AfterShipConfig: AfterShipAdapter,
    ShopifyConfig: ShopifyAdapter,
    UpsConfig: UpsAdapter,
    ShippoConfig: ShippoAdapter,
    GenericConfig: GenericAdapter,
}
"""The adapter class of each configuration type."""


def build_adapter(config: SourceAdapterConfig, *, tolerance_s: int) -> Adapter:
    """The adapter of one source, keys and vocabulary prepared (once, at start).

    ``tolerance_s`` bounds the clock skew of timestamped schemes (``standard``,
    ``shippo``).
    """
    adapter_type = ADAPTERS[type(config)]
    return adapter_type(config, tolerance_s=tolerance_s)
