"""The error hierarchy: every error carries a machine code and a human message.

`TransientError` means "try again later" (a worker retries it); `PermanentError` means the input can
never succeed (an event is quarantined, a command fails loudly).
"""


class MeteringError(Exception):
    """Base error: `code` is stable and machine-readable, `message` is for people."""

    code = "metering_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class TransientError(MeteringError):
    """Retrying the same work later may succeed (a lost connection, a deadlock)."""

    code = "transient"


class PermanentError(MeteringError):
    """Retrying the same input will always fail the same way."""

    code = "permanent"


class Conflict(PermanentError):
    """The request contradicts what is already recorded (HTTP 409; the CLI exits 1)."""

    code = "conflict"


class ConfigurationError(PermanentError):
    """Settings or a data file shipped with the service are wrong."""

    code = "configuration"


class DatabaseUnavailable(TransientError):
    """PostgreSQL cannot be reached."""

    code = "database_unavailable"


class DatabaseNotMigrated(PermanentError):
    """The database is reachable but its schema is not at the current migration."""

    code = "database_not_migrated"
