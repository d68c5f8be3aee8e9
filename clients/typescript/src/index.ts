export {
  InvalidEvent,
  MAX_METADATA_BYTES,
  MAX_METADATA_KEYS,
  SCHEMA_PATH,
  STREAM_FIELD,
  toJson,
  type UsageEvent,
  validateEvent,
} from "./event.js";
export { DEFAULT_PREFIX, haltFlag, streamForExperiment, usageStream } from "./keys.js";
export { Producer, type ProducerOptions } from "./producer.js";
export {
  anthropicTokens,
  type EventOptions,
  eventFromUsage,
  googleTokens,
  openaiTokens,
  type Provider,
  type TokenCounts,
} from "./usage.js";
