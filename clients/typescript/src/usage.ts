/**
 * Provider usage objects to the event's disjoint token counts, as `src/metering/usage/producer.py`
 * reads them: `input_tokens` excludes cache reads and writes, `output_tokens` includes reasoning.
 */
import { InvalidEvent, type UsageEvent, validateEvent } from "./event.js";

/** The five token classes of an event. */
export interface TokenCounts {
  input_tokens: number;
  cached_input_tokens: number;
  cache_write_tokens: number;
  output_tokens: number;
  reasoning_tokens: number;
}

export type Provider = "openai" | "anthropic" | "google";

export interface EventOptions {
  /** Unique per LLM call; a retried call reuses it. */
  eventId: string;
  experimentId: string;
  model: string;
  /** When the call happened; now by default. A string must be RFC 3339 with an offset. */
  occurredAt?: Date | string;
  /** The provider's service tier: standard (default), batch, flex, priority. */
  tier?: string;
  /** Free-form JSON kept on the ledger row: at most 32 keys and 4096 bytes. */
  metadata?: Record<string, unknown>;
}

type Usage = Readonly<Record<string, unknown>> | null | undefined;

/** The first of `names` that `usage` holds (not null or undefined). */
function field(usage: Usage, ...names: string[]): unknown {
  for (const name of names) {
    const value = usage?.[name];
    if (value !== null && value !== undefined) {
      return value;
    }
  }
  return undefined;
}

function nested(usage: Usage, ...names: string[]): Usage {
  const value = field(usage, ...names);
  return typeof value === "object" ? (value as Usage) : undefined;
}

function count(usage: Usage, ...names: string[]): number {
  const value = field(usage, ...names);
  if (value === undefined) {
    return 0;
  }
  // As Python's int(): numbers are truncated, integer strings parsed, anything else refused.
  const number =
    typeof value === "number" || typeof value === "bigint"
      ? Number(value)
      : typeof value === "string" && /^\s*[+-]?\d+\s*$/.test(value)
        ? Number(value)
        : Number.NaN;
  if (!Number.isFinite(number)) {
    throw new InvalidEvent([`${names[0]} is not a token count: ${String(value)}`]);
  }
  return Math.trunc(number);
}

/**
 * OpenAI `usage`, Chat Completions or Responses API. OpenAI's prompt count includes cached
 * tokens and its completion count includes reasoning.
 */
export function openaiTokens(usage: Usage): TokenCounts {
  const prompt = count(usage, "prompt_tokens", "input_tokens");
  const inputDetails = nested(usage, "prompt_tokens_details", "input_tokens_details");
  const cached = count(inputDetails, "cached_tokens");
  const outputDetails = nested(usage, "completion_tokens_details", "output_tokens_details");
  return {
    input_tokens: prompt - cached,
    cached_input_tokens: cached,
    cache_write_tokens: 0,
    output_tokens: count(usage, "completion_tokens", "output_tokens"),
    reasoning_tokens: count(outputDetails, "reasoning_tokens"),
  };
}

/** Anthropic `usage`: its classes are already disjoint. */
export function anthropicTokens(usage: Usage): TokenCounts {
  return {
    input_tokens: count(usage, "input_tokens"),
    cached_input_tokens: count(usage, "cache_read_input_tokens"),
    cache_write_tokens: count(usage, "cache_creation_input_tokens"),
    output_tokens: count(usage, "output_tokens"),
    reasoning_tokens: 0,
  };
}

/**
 * Gemini `usageMetadata` (REST and @google/genai camelCase, or snake_case). Gemini's prompt
 * count includes cached content; thoughts are counted apart from candidates.
 */
export function googleTokens(usage: Usage): TokenCounts {
  const prompt =
    count(usage, "prompt_token_count", "promptTokenCount") +
    count(usage, "tool_use_prompt_token_count", "toolUsePromptTokenCount");
  const cached = count(usage, "cached_content_token_count", "cachedContentTokenCount");
  const thoughts = count(usage, "thoughts_token_count", "thoughtsTokenCount");
  const candidates = count(usage, "candidates_token_count", "candidatesTokenCount");
  return {
    input_tokens: prompt - cached,
    cached_input_tokens: cached,
    cache_write_tokens: 0,
    output_tokens: candidates + thoughts,
    reasoning_tokens: thoughts,
  };
}

const READERS: Record<Provider, (usage: Usage) => TokenCounts> = {
  openai: openaiTokens,
  anthropic: anthropicTokens,
  google: googleTokens,
};

/**
 * A validated event from a provider's usage object. Throws `InvalidEvent` when the counts or
 * options break the contract (e.g. more cached tokens than prompt tokens).
 */
export function eventFromUsage(
  provider: Provider,
  usage: object,
  options: EventOptions,
): UsageEvent {
  const reader = READERS[provider];
  if (reader === undefined) {
    const known = Object.keys(READERS).join(", ");
    throw new InvalidEvent([`no usage reader for ${JSON.stringify(provider)}; known: ${known}`]);
  }
  const occurredAt = options.occurredAt ?? new Date();
  const event: UsageEvent = {
    event_id: options.eventId,
    experiment_id: options.experimentId,
    provider,
    model: options.model,
    ...reader(usage as Usage),
    occurred_at: occurredAt instanceof Date ? occurredAt.toISOString() : occurredAt,
  };
  if (options.tier !== undefined) {
    event.tier = options.tier;
  }
  if (options.metadata !== undefined) {
    event.metadata = options.metadata;
  }
  return validateEvent(event);
}
