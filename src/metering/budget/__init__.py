"""Budgets around the ledger: estimates before a run, halt flags when a balance runs out, and
balance alerts when it crosses a threshold."""
