"""Pricing: token usage to exact money and credits.

Pure functions; the only I/O is reading the catalog file.
"""

from metering.pricing.calculator import CallCost, charge_exact_credits
from metering.pricing.catalog import Catalog, ResolvedModel, get_catalog, load_catalog
from metering.pricing.errors import (
    CatalogError,
    InvalidUsage,
    NoPriceAt,
    PricingError,
    UnknownApiKeyMode,
    UnknownModel,
    UnknownProvider,
    UnsupportedTier,
)
from metering.pricing.estimate import EstimateItem, estimate_credits
from metering.pricing.usage import TokenUsage

__all__ = [
    "CallCost",
    "Catalog",
    "CatalogError",
    "EstimateItem",
    "InvalidUsage",
    "NoPriceAt",
    "PricingError",
    "ResolvedModel",
    "TokenUsage",
    "UnknownApiKeyMode",
    "UnknownModel",
    "UnknownProvider",
    "UnsupportedTier",
    "charge_exact_credits",
    "estimate_credits",
    "get_catalog",
    "load_catalog",
]
