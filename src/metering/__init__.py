"""Meters LLM token usage and bills it against prepaid credits."""
