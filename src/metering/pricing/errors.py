"""Pricing errors: each is permanent (the same input always fails) and carries a stable code."""

from metering.errors import ConfigurationError, PermanentError


class PricingError(PermanentError):
    """A call cannot be priced as given."""

    code = "pricing_error"


class UnknownProvider(PricingError):
    """The provider is not in the catalog; the message names the closest known providers."""

    code = "unknown_provider"


class UnknownModel(PricingError):
    """The model is not in the provider's catalog; the message names the closest known models."""

    code = "unknown_model"


class NoPriceAt(PricingError):
    """The model has no price in force at the call's time (it predates the first price)."""

    code = "no_price_at"


class UnsupportedTier(PricingError):
    """The provider or model does not price the requested service tier."""

    code = "unsupported_tier"


class InvalidUsage(PricingError):
    """Token counts or timestamps that can never be priced (negative, inconsistent, naive)."""

    code = "invalid_usage"


class UnknownApiKeyMode(PricingError):
    """`apiKeyMode` is neither `system` nor `own`."""

    code = "unknown_api_key_mode"


class CatalogError(ConfigurationError):
    """The price catalog is unreadable or invalid; the message names the file, entry and reason."""

    code = "invalid_catalog"
