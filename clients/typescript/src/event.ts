/**
 * The usage event: the wire contract, as `src/metering/usage/event.py` defines it.
 *
 * An event is checked against the repo's JSON Schema (copied into `dist/` at build time) and
 * against the rules the schema cannot say, the same as the Python model's validators:
 * reasoning tokens are part of output tokens, `batch: true` means tier `batch`, and metadata is
 * plain JSON of at most 32 keys and 4096 bytes.
 */
import { readFileSync } from "node:fs";

import { Ajv2020 } from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";

/** One LLM call's token usage, with the wire's snake_case field names. */
export interface UsageEvent {
  event_id: string;
  experiment_id: string;
  provider: string;
  model: string;
  /** Prompt tokens, excluding cache reads and writes. */
  input_tokens: number;
  /** Generated tokens, reasoning included. */
  output_tokens: number;
  cached_input_tokens?: number;
  cache_write_tokens?: number;
  /** The reasoning part of `output_tokens`. */
  reasoning_tokens?: number;
  /** RFC 3339 with an offset, e.g. 2025-06-01T12:00:00Z. */
  occurred_at: string;
  tier?: string | null;
  batch?: boolean | null;
  metadata?: Record<string, unknown> | null;
}

/** The stream entry field that carries the event's JSON. */
export const STREAM_FIELD = "event";
export const MAX_METADATA_KEYS = 32;
export const MAX_METADATA_BYTES = 4096;
const BATCH_TIER = "batch";

/** The schema file the package validates with: the repo's, copied by `npm run build`. */
export const SCHEMA_PATH = new URL("../usage-event.schema.json", import.meta.url);

/** An event the contract refuses; `problems` says each reason. Nothing was sent. */
export class InvalidEvent extends Error {
  readonly problems: string[];

  constructor(problems: string[]) {
    super(`invalid usage event: ${problems.join("; ")}`);
    this.name = "InvalidEvent";
    this.problems = problems;
  }
}

// ajv-formats is CommonJS: under NodeNext its default import is the module object.
const addFormats = addFormatsModule.default;
const ajv = new Ajv2020({ allErrors: true });
addFormats(ajv, ["date-time"]);
const schemaValid = ajv.compile(JSON.parse(readFileSync(SCHEMA_PATH, "utf8")));

/** Check `event` against the contract; returns it, or throws `InvalidEvent`. */
export function validateEvent(event: UsageEvent): UsageEvent {
  if (!schemaValid(event)) {
    const problems = (schemaValid.errors ?? []).map((error) => {
      const where = error.instancePath || "event";
      const extra = error.params["additionalProperty"];
      return `${where} ${error.message ?? "is invalid"}${extra === undefined ? "" : `: ${extra}`}`;
    });
    throw new InvalidEvent(problems);
  }
  const problems = contractProblems(event);
  if (problems.length > 0) {
    throw new InvalidEvent(problems);
  }
  return event;
}

/** The wire form: compact JSON without unset optional fields (as Python's `to_json`). */
export function toJson(event: UsageEvent): string {
  const fields = Object.entries(event).filter(([, value]) => value !== undefined && value !== null);
  return JSON.stringify(Object.fromEntries(fields));
}

function contractProblems(event: UsageEvent): string[] {
  const problems: string[] = [];
  if ((event.reasoning_tokens ?? 0) > event.output_tokens) {
    problems.push("reasoning_tokens are part of output_tokens and cannot exceed them");
  }
  if (event.batch === true && event.tier != null && event.tier !== BATCH_TIER) {
    problems.push(`batch: true contradicts tier ${JSON.stringify(event.tier)}`);
  }
  if (event.metadata != null) {
    if (Object.keys(event.metadata).length > MAX_METADATA_KEYS) {
      problems.push(`metadata has more than ${MAX_METADATA_KEYS} keys`);
    } else if (!isPlainJson(event.metadata)) {
      problems.push("metadata must be plain JSON: NaN, Infinity and undefined are not");
    } else if (pythonJsonBytes(event.metadata) > MAX_METADATA_BYTES) {
      problems.push(`metadata is larger than ${MAX_METADATA_BYTES} bytes of JSON`);
    }
  }
  return problems;
}

function isPlainJson(value: unknown): boolean {
  if (value === null || typeof value === "string" || typeof value === "boolean") {
    return true;
  }
  if (typeof value === "number") {
    return Number.isFinite(value);
  }
  if (Array.isArray(value)) {
    return value.every(isPlainJson);
  }
  if (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    return Object.values(value).every(isPlainJson);
  }
  return false;
}

/**
 * The size the worker measures metadata by: Python's `json.dumps` defaults, which escape
 * non-ASCII characters (`\uXXXX`) and separate with ", " and ": ".
 */
function pythonJsonBytes(value: unknown): number {
  if (typeof value === "string") {
    return JSON.stringify(value).replace(/[^\x00-\x7f]/g, "\\uXXXX").length;
  }
  if (Array.isArray(value)) {
    const items = value.reduce((sum: number, item) => sum + pythonJsonBytes(item), 0);
    return 2 + separators(value.length) + items;
  }
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value);
    const items = entries.reduce(
      (sum, [key, item]) => sum + pythonJsonBytes(key) + 2 + pythonJsonBytes(item),
      0,
    );
    return 2 + separators(entries.length) + items;
  }
  return JSON.stringify(value).length;
}

function separators(items: number): number {
  return items > 1 ? 2 * (items - 1) : 0;
}
