"""Settings from the environment (and `.env`), validated once at start."""

from functools import lru_cache
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from metering.ops.pricing_settings import ENV_FILE, PricingSettings

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/metering"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRESQL_SCHEMES = ("postgresql", "postgres")
REDIS_SCHEMES = ("redis", "rediss", "unix")


class Settings(BaseSettings, PricingSettings):
    """Every knob of the service; names are the environment variables (case-insensitive).

    The knobs of pricing (catalog, markup, platform fee) are `PricingSettings`'.
    """

    model_config = SettingsConfigDict(env_file=ENV_FILE, extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    celery_broker_url: str | None = None

    stripe_secret_key: SecretStr = SecretStr("")
    stripe_publishable_key: str = ""
    stripe_webhook_secret: SecretStr = SecretStr("")
    stripe_api_base: str | None = None
    frontend_url: str = "http://localhost:3000"
    stripe_credit_packs: dict[str, int] = Field(
        default_factory=lambda: {"small": 5_000, "medium": 20_000, "large": 100_000}
    )
    """Credit packs Checkout sells, by name: credits each (1,000 credits = $1.00)."""
    stripe_webhook_tolerance_s: int = Field(default=300, ge=30, le=3600)
    """A delivery signed further than this from now, in the past or the future, is refused."""
    stripe_requeue_after_s: int = Field(default=60, ge=1)
    """Beat re-enqueues Stripe events still unprocessed this long after they arrived."""
    stripe_lock_timeout_ms: int = Field(default=5_000, ge=100)
    """A Stripe handler waits this long for a row lock, then fails and is retried."""
    stripe_awaiting_purchase_bound_s: int = Field(default=3_600, ge=1)
    """A refund or dispute awaiting its purchase longer than this is flagged overdue."""

    metering_api_token: SecretStr = SecretStr("")
    flower_basic_auth: SecretStr = SecretStr("")

    metering_usage_shards: int = Field(default=1, ge=1, le=1024)
    metering_redis_prefix: str = Field(default="metering", min_length=1, max_length=64)
    metering_halt_threshold: int = 0
    """Credits: at or below this balance a user's running experiments are told to stop."""
    metering_low_balance_credits: int = 1000
    """Credits: a user whose balance falls to this or below gets one low-balance alert."""
    metering_alert_webhook_url: str | None = None
    """Where low-balance alerts are POSTed (signed); unset: Redis pub/sub only."""
    metering_alert_webhook_secret: SecretStr = SecretStr("")
    """Shared secret of the alert webhook's HMAC-SHA256 signature."""
    metering_log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    metering_log_json: bool = True
    """One JSON object per line; false for a human-readable console format."""
    metering_usage_batch_size: int = Field(default=1000, ge=1, le=10_000)
    """Stream entries read per XREADGROUP and charged per database transaction."""
    metering_usage_window_days: int = Field(default=35, ge=1, le=3_650)
    """Days after `occurred_at` that a usage event is charged at most once; older events are
    dead-lettered (`outside_window`), and call records older than this may be archived."""
    metering_usage_claim_idle_ms: int = Field(default=30_000, ge=100)
    """A delivered, unacknowledged entry idle this long is reclaimed (its consumer died)."""
    metering_usage_max_deliveries: int = Field(default=20, ge=2)
    """An entry delivered more often than this is dead-lettered (it keeps failing)."""
    metering_unknown_experiment_retry_s: int = Field(default=300, ge=0)
    """Events of an experiment not yet in the database are retried this long, then dead-lettered."""
    metering_drain_budget_s: float = Field(default=10, gt=0)
    """A drain task reads for at most this long, then hands over to a fresh task."""

    @field_validator("database_url")
    @classmethod
    def _postgresql_url(cls, value: str) -> str:
        _check_scheme("DATABASE_URL", value, POSTGRESQL_SCHEMES)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        _check_scheme("REDIS_URL", value, REDIS_SCHEMES)
        return value

    @model_validator(mode="after")
    def _retries_outlast_unknown_window(self) -> "Settings":
        # An entry awaiting its experiment is redelivered once per claim interval; it must not
        # hit the delivery limit before its retry window ends.
        retry_ms = self.metering_unknown_experiment_retry_s * 1000
        if self.metering_usage_max_deliveries * self.metering_usage_claim_idle_ms <= retry_ms:
            raise ValueError(
                "METERING_USAGE_MAX_DELIVERIES x METERING_USAGE_CLAIM_IDLE_MS must exceed "
                "METERING_UNKNOWN_EXPERIMENT_RETRY_S"
            )
        return self

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url


def _check_scheme(name: str, url: str, schemes: tuple[str, ...]) -> None:
    scheme = urlsplit(url).scheme.split("+", 1)[0]
    if scheme not in schemes:
        wanted = " or ".join(f"{s}://" for s in schemes)
        raise ValueError(
            f"{name} must be a {wanted} URL, not {f'{scheme}://' if scheme else url!r}"
        )


def to_asyncpg_url(url: str) -> str:
    """Turn a Prisma-style `postgresql://...?schema=public` URL into SQLAlchemy's asyncpg form.

    The platform and this service share one `DATABASE_URL`; Prisma's `schema` parameter means
    nothing to asyncpg, so it is dropped (only the `public` schema is supported).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in POSTGRESQL_SCHEMES:
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {scheme}://")
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "schema"]
    return urlunsplit(("postgresql+asyncpg", parts.netloc, parts.path, urlencode(query), ""))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
