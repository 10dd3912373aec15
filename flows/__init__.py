"""Prefect flows: the DAGs that run MetaClaw's steps on schedules and on demand."""
