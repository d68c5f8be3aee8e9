import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { InvalidEvent, type Provider, eventFromUsage, streamForExperiment } from "../src/index.js";
import { usageCases } from "../test-support/cases.js";

const OPTIONS = { eventId: "evt-1", experimentId: "exp-1", model: "some-model" };

describe("the token counts of provider usage objects equal the Python emitter's", () => {
  for (const item of usageCases.usage) {
    test(item.name, () => {
      const read = () => eventFromUsage(item.provider as Provider, item.usage, OPTIONS);
      if (item.error !== undefined) {
        assert.throws(read, (error: unknown) => {
          assert.ok(error instanceof InvalidEvent);
          assert.match(error.message, new RegExp(item.error ?? ""));
          return true;
        });
        return;
      }
      const event = read();
      const tokens = {
        input_tokens: event.input_tokens,
        cached_input_tokens: event.cached_input_tokens,
        cache_write_tokens: event.cache_write_tokens,
        output_tokens: event.output_tokens,
        reasoning_tokens: event.reasoning_tokens,
      };
      assert.deepEqual(tokens, item.tokens);
    });
  }
});

describe("events of eventFromUsage", () => {
  const usage = { prompt_tokens: 10, completion_tokens: 2 };

  test("carry the call's identity, tier, metadata and time", () => {
    const event = eventFromUsage("openai", usage, {
      ...OPTIONS,
      occurredAt: new Date(Date.UTC(2025, 5, 1, 12, 0, 0, 250)),
      tier: "flex",
      metadata: { run: 7 },
    });
    assert.equal(event.event_id, "evt-1");
    assert.equal(event.experiment_id, "exp-1");
    assert.equal(event.provider, "openai");
    assert.equal(event.model, "some-model");
    assert.equal(event.occurred_at, "2025-06-01T12:00:00.250Z");
    assert.equal(event.tier, "flex");
    assert.deepEqual(event.metadata, { run: 7 });
  });

  test("happen now by default", () => {
    const before = Date.now();
    const occurred = Date.parse(eventFromUsage("openai", usage, OPTIONS).occurred_at);
    assert.ok(occurred >= before && occurred <= Date.now());
  });

  test("refuse an occurredAt string without an offset", () => {
    assert.throws(
      () => eventFromUsage("openai", usage, { ...OPTIONS, occurredAt: "2025-06-01T12:00:00" }),
      /occurred_at must match format "date-time"/,
    );
  });

  test("refuse a count that is not a number", () => {
    assert.throws(
      () => eventFromUsage("anthropic", { input_tokens: "many", output_tokens: 1 }, OPTIONS),
      /input_tokens is not a token count: many/,
    );
  });
});

describe("shard routing equals redis_keys.py's crc32 rule", () => {
  for (const item of usageCases.shards) {
    test(`${item.experiment_id} over ${item.shards} shard(s)`, () => {
      assert.equal(streamForExperiment("metering", item.shards, item.experiment_id), item.stream);
    });
  }
});
