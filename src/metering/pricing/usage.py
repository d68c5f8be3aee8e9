"""Token usage of one LLM call, in disjoint classes so that no token is billed twice."""

from dataclasses import dataclass

from metering.pricing.errors import InvalidUsage


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one call. Invariants: every count is an int >= 0, the classes are disjoint.

    - `input_tokens`: prompt tokens read fresh, excluding cache reads and cache writes.
    - `cached_input_tokens`: prompt tokens read from the provider's cache.
    - `cache_write_tokens`: prompt tokens written to the provider's cache.
    - `output_tokens`: every generated token, reasoning included.
    - `reasoning_tokens`: the part of `output_tokens` that was reasoning (<= `output_tokens`).
    """

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def __post_init__(self) -> None:
        fresh, output, cached, written, reasoning = (
            self.input_tokens,
            self.output_tokens,
            self.cached_input_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
        )
        if (
            type(fresh) is type(output) is type(cached) is type(written) is type(reasoning) is int
            and fresh >= 0
            and cached >= 0
            and written >= 0
            and 0 <= reasoning <= output
        ):
            return
        self._refuse()

    def _refuse(self) -> None:
        """Raise `InvalidUsage` naming the first count that breaks an invariant."""
        for name in (
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise InvalidUsage(f"{name} must be an integer >= 0, not {value!r}")
        if self.reasoning_tokens > self.output_tokens:
            raise InvalidUsage(
                f"reasoning_tokens ({self.reasoning_tokens}) are part of output_tokens "
                f"({self.output_tokens}) and cannot exceed them"
            )

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt: fresh input, cache reads and cache writes."""
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        """Every token of the call, each counted once."""
        return self.prompt_tokens + self.output_tokens
