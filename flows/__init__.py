"""Prefect flows (one per stage, and the pipeline that chains them) and the `unlearn` CLI."""
