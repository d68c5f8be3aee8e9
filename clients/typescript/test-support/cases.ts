/** The cases the TypeScript and Python producers share (tests/clients/*.json). */
import { readRepoJson } from "./repo.js";

export interface UsageCase {
  name: string;
  provider: string;
  usage: Record<string, unknown>;
  tokens?: Record<string, number>;
  error?: string;
}

export interface ShardCase {
  experiment_id: string;
  shards: number;
  stream: string;
}

export interface EventCase {
  name: string;
  valid: boolean;
  changes?: Record<string, unknown>;
  remove?: string[];
  metadata_text?: { char: string; count: number };
  metadata_keys?: number;
}

export const usageCases = readRepoJson<{ usage: UsageCase[]; shards: ShardCase[] }>(
  "tests/clients/usage_cases.json",
);

const events = readRepoJson<{ base: Record<string, unknown>; cases: EventCase[] }>(
  "tests/clients/event_cases.json",
);
export const eventCases = events.cases;

/** The document a case describes (the Python test builds it the same way). */
export function eventDocument(item: EventCase): Record<string, unknown> {
  const document: Record<string, unknown> = { ...events.base, ...item.changes };
  for (const name of item.remove ?? []) {
    delete document[name];
  }
  if (item.metadata_text !== undefined) {
    document["metadata"] = { k: item.metadata_text.char.repeat(item.metadata_text.count) };
  }
  if (item.metadata_keys !== undefined) {
    document["metadata"] = Object.fromEntries(
      Array.from({ length: item.metadata_keys }, (_, i) => [`k${i}`, i]),
    );
  }
  return document;
}
