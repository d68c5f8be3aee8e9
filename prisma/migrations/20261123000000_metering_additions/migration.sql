-- AlterTable
ALTER TABLE "CreditTransaction" ADD COLUMN     "experimentId" TEXT,
ADD COLUMN     "idempotencyKey" TEXT;

-- AlterTable
ALTER TABLE "MAACExperiment" ADD COLUMN     "exactCreditsUsed" DECIMAL(38,18) NOT NULL DEFAULT 0;

-- CreateTable
CREATE TABLE "UnbilledUsage" (
    "eventId" TEXT NOT NULL,
    "experimentId" TEXT NOT NULL,
    "amount" INTEGER NOT NULL,
    "metadata" JSONB,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "UnbilledUsage_pkey" PRIMARY KEY ("eventId")
);

-- CreateTable
CREATE TABLE "StripeEvent" (
    "id" TEXT NOT NULL,
    "type" TEXT NOT NULL,
    "livemode" BOOLEAN NOT NULL,
    "payload" JSONB NOT NULL,
    "receivedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "processedAt" TIMESTAMP(3),
    "outcome" TEXT,
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "lastError" TEXT,

    CONSTRAINT "StripeEvent_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "UnbilledUsage_experimentId_idx" ON "UnbilledUsage"("experimentId");

-- CreateIndex
CREATE INDEX "StripeEvent_processedAt_receivedAt_idx" ON "StripeEvent"("processedAt", "receivedAt");

-- CreateIndex
CREATE UNIQUE INDEX "CreditTransaction_idempotencyKey_key" ON "CreditTransaction"("idempotencyKey");

-- CreateIndex
CREATE INDEX "CreditTransaction_experimentId_idx" ON "CreditTransaction"("experimentId");

-- CreateIndex
CREATE INDEX "CreditTransaction_stripePaymentId_idx" ON "CreditTransaction"("stripePaymentId");

-- CreateIndex
CREATE INDEX "MAACExperiment_userId_idx" ON "MAACExperiment"("userId");

-- AddForeignKey
ALTER TABLE "UnbilledUsage" ADD CONSTRAINT "UnbilledUsage_experimentId_fkey" FOREIGN KEY ("experimentId") REFERENCES "MAACExperiment"("id") ON DELETE CASCADE ON UPDATE CASCADE;
