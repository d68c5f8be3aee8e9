"""The ledger: the only code that moves credits (`journal`: postings; `charging`: usage batches),
and what reads it (`reports`, `reconcile`), corrects it (`accounts`) and archives it (`archive`).

Invariants kept here, inside the caller's database transaction:
- every change to `User.credits` is a `CreditTransaction` row written in the same transaction, so
  `User.credits = SUM(amount)` always;
- every change to `MAACExperiment.creditsUsed` is a USAGE row (or an `UnbilledUsage` row for an
  experiment without a user), so `creditsUsed = -SUM(usage amounts)` always;
- each posting carries a unique idempotency key in the key space of its kind (`key_kind`: usage,
  purchase, clawback, operator; stored as `<kind>:<key>`), so keys of different kinds never
  collide. Posting a key again with the same type, user, amount and experiment changes nothing
  and returns the first result; with any of them different it is refused (`KeyConflict`), never
  answered with the other posting. Duplicates are found by the database (`ON CONFLICT DO
  NOTHING`);
- each charged call has a `UsageCall` record, keyed by its event id and written in the same
  transaction as its USAGE or UnbilledUsage row. It has no foreign key, so it outlives the
  platform's deletes of users and experiments: an event id once recorded is never counted again;
- rows are locked in one order, so concurrent transactions cannot deadlock on each other's
  locks: a usage batch holds its users against deletion (`FOR KEY SHARE`), then locks its
  experiments, writes its rows (call records first), and locks its users' balances (`FOR NO KEY
  UPDATE`) last, each step in id order. Batches of different experiments that share users thus
  write their rows side by side and queue only for the final balance updates; other postings
  lock users `FOR NO KEY UPDATE` too, which never blocks a key share. A user's deletion locks
  the user and then, by ON DELETE SET NULL, its experiments: it waits for the batches holding
  the user, never the reverse. Call records take no lock beyond their own key.

Rows are never updated or deleted: a correction is a new row (ADJUSTMENT or REFUND).
"""
