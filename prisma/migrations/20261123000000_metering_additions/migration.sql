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
CREATE TABLE "UsageCall" (
    "eventId" TEXT NOT NULL,
    "experimentId" TEXT NOT NULL,
    "userId" TEXT,
    "provider" TEXT NOT NULL,
    "model" TEXT NOT NULL,
    "tier" TEXT NOT NULL,
    "inputTokens" INTEGER NOT NULL,
    "outputTokens" INTEGER NOT NULL,
    "cachedInputTokens" INTEGER NOT NULL,
    "cacheWriteTokens" INTEGER NOT NULL,
    "reasoningTokens" INTEGER NOT NULL,
    "exactCredits" DECIMAL(38,18) NOT NULL,
    "credits" INTEGER NOT NULL,
    "occurredAt" TIMESTAMP(3) NOT NULL,
    "catalogVersion" TEXT NOT NULL,
    "payloadDigest" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "UsageCall_pkey" PRIMARY KEY ("eventId")
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
    "paymentIntent" TEXT,

    CONSTRAINT "StripeEvent_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "StripeCheckoutSession" (
    "id" TEXT NOT NULL,
    "userId" TEXT NOT NULL,
    "credits" INTEGER NOT NULL,
    "amountCents" INTEGER NOT NULL,
    "currency" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "StripeCheckoutSession_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "UnbilledUsage_experimentId_idx" ON "UnbilledUsage"("experimentId");

-- CreateIndex
CREATE INDEX "UsageCall_experimentId_idx" ON "UsageCall"("experimentId");

-- CreateIndex
CREATE INDEX "StripeEvent_processedAt_receivedAt_idx" ON "StripeEvent"("processedAt", "receivedAt");

-- CreateIndex
CREATE INDEX "StripeEvent_paymentIntent_idx" ON "StripeEvent"("paymentIntent");

-- CreateIndex
CREATE INDEX "StripeCheckoutSession_userId_idx" ON "StripeCheckoutSession"("userId");

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
