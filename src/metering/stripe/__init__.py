"""Stripe: Checkout sessions that sell credits, and signed webhooks processed exactly once.

Data flow: `webhooks` verifies a delivery and stores the raw event; the `stripe` queue runs
`processing.process_event`, which hands the stored event to its handler in `handlers`; handlers
move credits only through the ledger, keyed so that any delivery order or count ends the same.
After the commit, `follow_up` brings the buyer's halt flags and balance alerts in line.
"""
