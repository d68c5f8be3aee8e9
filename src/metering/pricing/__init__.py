"""Pricing: token usage to exact money and credits. Pure functions; no I/O but reading the catalog."""
