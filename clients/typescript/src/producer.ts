/**
 * Publishing usage events from a TypeScript experiment runner: Redis only, the twin of
 * `metering.usage.producer.Emitter`. Each event is validated before it leaves the process and added to
 * its experiment's stream (`XADD <stream> * event <JSON>`); `shouldStop` reads the halt flag the
 * workers set when the owner's balance runs out.
 */
import { Redis } from "ioredis";

import { STREAM_FIELD, type UsageEvent, toJson, validateEvent } from "./event.js";
import { DEFAULT_PREFIX, haltFlag, streamForExperiment } from "./keys.js";

export interface ProducerOptions {
  /** The workers' `METERING_REDIS_PREFIX` (default `metering`). */
  prefix?: string;
  /** The workers' `METERING_USAGE_SHARDS` (default 1): both sides must agree. */
  shards?: number;
}

export class Producer {
  readonly redis: Redis;
  readonly prefix: string;
  readonly shards: number;

  constructor(redis: Redis, options: ProducerOptions = {}) {
    const shards = options.shards ?? 1;
    if (!Number.isInteger(shards) || shards < 1) {
      throw new RangeError(`shards must be a whole number >= 1, not ${shards}`);
    }
    this.redis = redis;
    this.prefix = options.prefix ?? DEFAULT_PREFIX;
    this.shards = shards;
  }

  static fromUrl(url: string, options: ProducerOptions = {}): Producer {
    return new Producer(new Redis(url), options);
  }

  /** Validate the event and return its stream and JSON; throws `InvalidEvent`. */
  entry(event: UsageEvent): [stream: string, json: string] {
    const valid = validateEvent(event);
    return [streamForExperiment(this.prefix, this.shards, valid.experiment_id), toJson(valid)];
  }

  /** Publish one event; resolves to its stream entry id. */
  async emit(event: UsageEvent): Promise<string> {
    const [stream, json] = this.entry(event);
    return entryId(await this.redis.xadd(stream, "*", STREAM_FIELD, json));
  }

  /**
   * Publish many events in one round trip; resolves to their entry ids in order. All are
   * validated first: one invalid event sends none.
   */
  async emitMany(events: Iterable<UsageEvent>): Promise<string[]> {
    const entries = Array.from(events, (event) => this.entry(event));
    if (entries.length === 0) {
      return [];
    }
    const pipeline = this.redis.pipeline();
    for (const [stream, json] of entries) {
      pipeline.xadd(stream, "*", STREAM_FIELD, json);
    }
    const replies = (await pipeline.exec()) ?? [];
    return replies.map(([error, id]) => {
      if (error) {
        throw error;
      }
      return entryId(id as string | null);
    });
  }

  /** True once a worker has halted the experiment (its owner's credits ran out). */
  async shouldStop(experimentId: string): Promise<boolean> {
    return (await this.redis.exists(haltFlag(this.prefix, experimentId))) > 0;
  }

  async close(): Promise<void> {
    await this.redis.quit();
  }
}

function entryId(id: string | null): string {
  if (id === null) {
    throw new Error("Redis added no stream entry");
  }
  return id;
}
