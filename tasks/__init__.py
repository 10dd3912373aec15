"""Prefect tasks: thin wrappers that add retries, caching and artifacts to `metaclaw` calls."""
