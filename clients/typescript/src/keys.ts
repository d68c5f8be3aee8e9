/**
 * The Redis keys a producer touches, as `src/metering/ops/redis_keys.py` names them. All start with
 * the prefix the workers use (`METERING_REDIS_PREFIX`, default `metering`).
 */
import { crc32 } from "node:zlib";

export const DEFAULT_PREFIX = "metering";

/** The usage stream; with shards, the stream of shard `shard` (a Redis Cluster hash tag). */
export function usageStream(prefix: string, shard?: number): string {
  return shard === undefined ? `${prefix}:usage` : `${prefix}:usage:{${shard}}`;
}

/** The stream of an experiment's events: `crc32(experiment_id) mod shards` (zlib's CRC-32). */
export function streamForExperiment(prefix: string, shards: number, experimentId: string): string {
  if (shards === 1) {
    return usageStream(prefix);
  }
  return usageStream(prefix, crc32(Buffer.from(experimentId, "utf8")) % shards);
}

/** Set while an experiment must stop: its owner's balance reached the halt threshold. */
export function haltFlag(prefix: string, experimentId: string): string {
  return `${prefix}:halt:${experimentId}`;
}
