"""Shared by the pricing tests: a small catalog."""

MINIMAL = """
updated = 2025-01-01

[providers.acme]
name = "Acme"
tiers = { batch = "0.5" }

[[providers.acme.models]]
id = "thinker-1"
aliases = ["thinker-1-2025-01-01"]
source = "https://example.com/pricing"
checked = 2025-01-01
[[providers.acme.models.prices]]
from = 2025-01-01T00:00:00Z
input = "1.00"
output = "4.00"
reasoning = "8.00"
"""
