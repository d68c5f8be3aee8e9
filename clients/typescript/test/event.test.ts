import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { InvalidEvent, SCHEMA_PATH, type UsageEvent, toJson, validateEvent } from "../src/index.js";
import { eventCases, eventDocument } from "../test-support/cases.js";
import { repoFile } from "../test-support/repo.js";

const VALID: UsageEvent = {
  event_id: "evt-1",
  experiment_id: "exp-1",
  provider: "openai",
  model: "gpt-4o-mini",
  input_tokens: 10,
  output_tokens: 2,
  occurred_at: "2025-06-01T12:00:00Z",
};

test("the package validates with the repo's schema file, byte for byte", () => {
  const repo = readFileSync(repoFile("src/metering/schemas/usage-event.schema.json"));
  assert.ok(readFileSync(SCHEMA_PATH).equals(repo));
});

describe("validation judges events as the Python model does", () => {
  for (const item of eventCases) {
    test(`${item.name}: ${item.valid ? "valid" : "invalid"}`, () => {
      const check = () => validateEvent(eventDocument(item) as unknown as UsageEvent);
      if (item.valid) {
        assert.doesNotThrow(check);
      } else {
        assert.throws(check, InvalidEvent);
      }
    });
  }
});

describe("metadata that JSON.stringify would silently change is refused", () => {
  for (const [name, value] of [
    ["NaN", Number.NaN],
    ["Infinity", Number.POSITIVE_INFINITY],
    ["undefined", undefined],
    ["a Date", new Date(0)],
  ] as const) {
    test(name, () => {
      assert.throws(
        () => validateEvent({ ...VALID, metadata: { value } }),
        /metadata must be plain JSON/,
      );
    });
  }
});

test("an invalid event's error names every problem", () => {
  const event = { ...VALID, input_tokens: -1, total_tokens: 12 } as UsageEvent;
  assert.throws(
    () => validateEvent(event),
    (error: unknown) => {
      assert.ok(error instanceof InvalidEvent);
      assert.deepEqual(error.problems, [
        "event must NOT have additional properties: total_tokens",
        "/input_tokens must be >= 0",
      ]);
      return true;
    },
  );
});

test("the wire form leaves out unset optional fields", () => {
  const json = toJson({ ...VALID, tier: null, cached_input_tokens: 0 });
  assert.deepEqual(JSON.parse(json), { ...VALID, cached_input_tokens: 0 });
});
