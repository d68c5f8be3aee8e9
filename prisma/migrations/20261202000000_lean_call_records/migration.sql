-- Call records hold the usage, USAGE rows sum them (Alembic revision 0005).
-- AlterTable
ALTER TABLE "UsageCall" ADD COLUMN "metadata" JSONB,
ALTER COLUMN "payloadDigest" SET DATA TYPE BYTEA USING decode(left("payloadDigest", 32), 'hex');
