"""Orchestration over :mod:`pruning`: config, file-level stages, Prefect flows, MLflow tracking, the CLI."""
