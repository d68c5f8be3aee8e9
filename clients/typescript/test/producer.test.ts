import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { Redis } from "ioredis";

import {
  InvalidEvent,
  Producer,
  type UsageEvent,
  haltFlag,
  toJson,
  usageStream,
} from "../src/index.js";
import { usageCases } from "../test-support/cases.js";

// The real Redis, under a key prefix of this run's own, removed afterwards.
const REDIS_URL = process.env["METERING_TEST_REDIS_URL"] ?? "redis://127.0.0.1:6379/0";
const RUN_PREFIX = `metering-ts-test-${process.pid}-${randomUUID().slice(0, 8)}`;
let redis: Redis;

before(() => {
  redis = new Redis(REDIS_URL);
});

after(async () => {
  const found = await redis.keys(`${RUN_PREFIX}*`);
  if (found.length > 0) {
    await redis.del(...found);
  }
  await redis.quit();
});

function event(experimentId: string, n: number): UsageEvent {
  return {
    event_id: `evt-${randomUUID()}`,
    experiment_id: experimentId,
    provider: "anthropic",
    model: "claude-sonnet-4",
    input_tokens: 100 + n,
    output_tokens: 10,
    occurred_at: "2025-09-01T12:00:00Z",
  };
}

async function entries(stream: string): Promise<{ id: string; fields: string[] }[]> {
  const rows = await redis.xrange(stream, "-", "+");
  return rows.map(([id, fields]) => ({ id, fields }));
}

function uniquePrefix(): string {
  return `${RUN_PREFIX}:${randomUUID().slice(0, 8)}`;
}

describe("Producer against the real Redis", () => {
  test("emit adds one entry with the event's wire JSON and returns its id", async () => {
    const prefix = uniquePrefix();
    const producer = new Producer(redis, { prefix });
    const sent = event("exp-1", 0);
    const id = await producer.emit(sent);
    assert.deepEqual(await entries(usageStream(prefix)), [{ id, fields: ["event", toJson(sent)] }]);
  });

  test("emitMany sends a list in order to each experiment's shard", async () => {
    const prefix = uniquePrefix();
    const producer = new Producer(redis, { prefix, shards: 16 });
    const cases = usageCases.shards.filter((item) => item.shards === 16);
    assert.ok(cases.length > 0);
    const sent = cases.flatMap((item) => [1, 2].map((n) => event(item.experiment_id, n)));
    const ids = await producer.emitMany(sent);
    assert.equal(ids.length, sent.length);
    for (const item of cases) {
      const stream = item.stream.replace(/^metering:/, `${prefix}:`);
      const expected = sent.filter((e) => e.experiment_id === item.experiment_id).map(toJson);
      assert.deepEqual((await entries(stream)).map((entry) => entry.fields[1]), expected);
    }
    assert.deepEqual(await redis.keys(`${prefix}:usage`), []);
  });

  test("one invalid event in emitMany sends none", async () => {
    const prefix = uniquePrefix();
    const producer = new Producer(redis, { prefix });
    const bad = { ...event("exp-1", 0), reasoning_tokens: 99 };
    await assert.rejects(producer.emitMany([event("exp-1", 1), bad]), InvalidEvent);
    await assert.rejects(producer.emit({ ...event("exp-1", 2), input_tokens: -1 }), InvalidEvent);
    assert.equal(await redis.exists(usageStream(prefix)), 0);
  });

  test("emitMany of nothing sends nothing", async () => {
    const prefix = uniquePrefix();
    assert.deepEqual(await new Producer(redis, { prefix }).emitMany([]), []);
    assert.equal(await redis.exists(usageStream(prefix)), 0);
  });

  test("shouldStop follows the halt flag a worker sets", async () => {
    const prefix = uniquePrefix();
    const producer = new Producer(redis, { prefix });
    assert.equal(await producer.shouldStop("exp-halted"), false);
    const flag = JSON.stringify({ userId: "u", reason: "balance" });
    await redis.set(haltFlag(prefix, "exp-halted"), flag);
    assert.equal(await producer.shouldStop("exp-halted"), true);
    assert.equal(await producer.shouldStop("exp-other"), false);
  });

  test("fromUrl connects, and close ends the connection", async () => {
    const prefix = uniquePrefix();
    const producer = Producer.fromUrl(REDIS_URL, { prefix });
    await producer.emit(event("exp-1", 0));
    await producer.close();
    await assert.rejects(producer.emit(event("exp-1", 1)), /Connection is closed/);
    assert.equal(await redis.xlen(usageStream(prefix)), 1);
  });

  test("a shard count that is not a whole number >= 1 is refused", () => {
    assert.throws(() => new Producer(redis, { shards: 0 }), RangeError);
    assert.throws(() => new Producer(redis, { shards: 1.5 }), RangeError);
  });
});
