// Prisma CLI configuration of the tests' workspaces (tests/prisma/cli.py copies it into each).
//
// Prisma 6's CLI runs its schema engine as WebAssembly when a driver adapter is configured, so
// nothing is downloaded. Two workarounds for @prisma/adapter-pg as the CLI's adapter:
// - PostgreSQL's catalog types "char" and name are read as text (the adapter maps neither, and
//   introspection reads both);
// - the shadow database is made here: the adapter's own overrides `database` of a connection
//   (a connection string wins over it) and drops it before closing its pool (which then fails).
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";
import { defineConfig } from "prisma/config";

const READ_AS_TEXT = new Set([18, 19]);
const TEXT = 25;
const addFields = pg.Result.prototype.addFields;
pg.Result.prototype.addFields = function (fields) {
  for (const field of fields) if (READ_AS_TEXT.has(field.dataTypeID)) field.dataTypeID = TEXT;
  return addFields.call(this, fields);
};

const url = new URL(process.env.DATABASE_URL ?? "");
const connection = {
  host: url.hostname,
  port: Number(url.port || 5432),
  user: decodeURIComponent(url.username),
  password: decodeURIComponent(url.password),
  database: decodeURIComponent(url.pathname.slice(1)),
};

async function admin(statement: string): Promise<void> {
  const client = new pg.Client(connection);
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end();
  }
}

class Adapter extends PrismaPg {
  async connectToShadowDb() {
    const shadow = `prisma_migrate_shadow_db_${globalThis.crypto.randomUUID()}`;
    await admin(`CREATE DATABASE "${shadow}"`);
    const adapter = await new PrismaPg({ ...connection, database: shadow }).connect();
    const dispose = adapter.dispose.bind(adapter);
    adapter.dispose = async () => {
      await dispose();
      await admin(`DROP DATABASE IF EXISTS "${shadow}" WITH (FORCE)`);
    };
    return adapter;
  }
}

export default defineConfig({
  experimental: { adapter: true },
  engine: "js",
  schema: "schema.prisma",
  migrations: { path: "migrations" },
  adapter: async () => new Adapter(connection),
});
