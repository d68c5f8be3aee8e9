// Copies the repo's JSON Schema of the usage event into dist/, byte for byte: the package
// validates with the very file the Python model generates, never a copy kept by hand.
import { copyFileSync, mkdirSync } from "node:fs";

const source = new URL("../../../src/metering/schemas/usage-event.schema.json", import.meta.url);
const target = new URL("../dist/usage-event.schema.json", import.meta.url);
mkdirSync(new URL(".", target), { recursive: true });
copyFileSync(source, target);
