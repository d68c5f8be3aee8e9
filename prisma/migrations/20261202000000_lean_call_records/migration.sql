-- Call records hold the usage, USAGE rows sum them (Alembic revision 0005).
-- AlterTable
ALTER TABLE "UsageCall" ADD COLUMN "metadata" JSONB,
ALTER COLUMN "payloadDigest" SET DATA TYPE BYTEA USING CASE
    WHEN "payloadDigest" ~ '^[0-9a-f]{32}' THEN decode(left("payloadDigest", 32), 'hex') END;

-- CreateIndex (Alembic revision 0006)
CREATE INDEX "UsageCall_userId_idx" ON "UsageCall"("userId");

-- CreateTable (Alembic revision 0007)
CREATE TABLE "ArchivedUsage" (
    "id" TEXT NOT NULL,
    "experimentId" TEXT NOT NULL,
    "userId" TEXT,
    "calls" INTEGER NOT NULL,
    "credits" INTEGER NOT NULL,
    "exactCredits" DECIMAL(38,18) NOT NULL,
    "inputTokens" BIGINT NOT NULL,
    "outputTokens" BIGINT NOT NULL,
    "archivedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "ArchivedUsage_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "ArchivedUsage_experimentId_idx" ON "ArchivedUsage"("experimentId");
