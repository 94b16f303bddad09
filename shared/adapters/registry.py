"""Every built-in adapter by name, and the one way to build a source's adapter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from shared.adapters import aftership, easypost, shippo, shopify, ups
from shared.adapters.base import Adapter, AdapterFactory
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
from shared.adapters.generic import GenericAdapter
from shared.adapters.hex import HexAdapter
from shared.adapters.standard import StandardAdapter

__all__ = ["ADAPTERS", "build_adapter"]

ADAPTERS: Final[Mapping[type[SourceAdapterConfig], AdapterFactory]] = {
    StandardConfig: StandardAdapter,
    HexConfig: HexAdapter,
    EasyPostConfig: easypost.RULES.adapter,
    AfterShipConfig: aftership.RULES.adapter,
    ShopifyConfig: shopify.RULES.adapter,
    UpsConfig: ups.RULES.adapter,
    ShippoConfig: shippo.RULES.adapter,
    GenericConfig: GenericAdapter,
}
"""How each configuration type's adapter is built: its class, or a built-in carrier's rules."""


def build_adapter(config: SourceAdapterConfig, *, tolerance_s: int) -> Adapter:
    """The adapter of one source, keys and vocabulary prepared (once, at start).

    ``tolerance_s`` bounds the clock skew of timestamped schemes (``standard``,
    ``shippo``).
    """
    return ADAPTERS[type(config)](config, tolerance_s=tolerance_s)
