/** Files of the repository the package lives in, for tests that share them with Python. */
import { readFileSync } from "node:fs";

/** `path` from the repository's root (compiled files run from dist/<dir>/). */
export function repoFile(path: string): URL {
  return new URL(`../../../../${path}`, import.meta.url);
}

export function readRepoJson<T>(path: string): T {
  return JSON.parse(readFileSync(repoFile(path), "utf8")) as T;
}
