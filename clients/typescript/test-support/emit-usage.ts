/**
 * Emits usage events read as JSON from stdin, for the Python end-to-end test
 * (tests/clients/test_typescript_producer.py): `{"redisUrl", "prefix", "shards", "calls":
 * [{"provider", "usage", "options"}]}`. Prints `{"ids": [...], "events": [...]}`.
 */
import { text } from "node:stream/consumers";

import { type EventOptions, Producer, type Provider, eventFromUsage } from "../src/index.js";

interface Request {
  redisUrl: string;
  prefix: string;
  shards: number;
  calls: { provider: Provider; usage: object; options: EventOptions }[];
}

const request = JSON.parse(await text(process.stdin)) as Request;
const { prefix, shards } = request;
const producer = Producer.fromUrl(request.redisUrl, { prefix, shards });
try {
  const events = request.calls.map((call) =>
    eventFromUsage(call.provider, call.usage, call.options),
  );
  const ids = await producer.emitMany(events);
  process.stdout.write(`${JSON.stringify({ ids, events })}\n`);
} finally {
  await producer.close();
}
