"""Pipeline stages and their Prefect tasks.

This layer calls the pure core (``unlearn``) and talks to MLflow, DVC and Great Expectations.
``tasks.stage`` holds the one implementation of each stage (one module per stage); ``tasks.prefect_tasks`` wraps them
as Prefect tasks, and ``unlearn stage <name>`` (what ``dvc repro`` runs) calls them directly.
"""
