"""Dagster resources: storage roots, Spark, ML settings, and the per-environment factories."""
