"""Celery tasks: thin wrappers that run domain functions on the worker's event loop."""
