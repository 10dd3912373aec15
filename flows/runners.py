"""# Task runners: where the fan-out tasks of a flow run

Scoring batches, diagnoses and backfill partitions are independent tasks. On one machine a thread
pool in the flow's process runs them; when one machine is not enough, a Dask cluster does
(`prefect-dask`), so the judge calls of many batches, or the imports of many partitions, run on
many cores and machines at once. Which one is configuration, not code:

    [flows]
    task_runner = "dask"                      # or "thread" (default)
    dask_address = "tcp://scheduler:8786"     # unset: a temporary local cluster per flow run

A flow declares `task_runner=ConfiguredTaskRunner()`: the choice is read from `Settings()` when a
flow *run* starts (in the worker process that runs it), not when the flow module is imported, so
one deployment follows the configuration of the machine it runs on. Fan-out tasks must be
idempotent and write through the ledger (stable ids): a Dask worker may retry them.
"""

from __future__ import annotations

from typing import Any

from prefect.futures import PrefectFuture, PrefectFutureList
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from metaclaw.config import Settings


def task_runner(settings: Settings) -> TaskRunner[Any]:
    """The task runner `flows.task_runner` names (a new, unstarted instance)."""
    kind = settings.flows.task_runner
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=settings.flows.thread_workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:  # an optional extra: say what to install
            raise RuntimeError(
                "flows.task_runner = 'dask' needs prefect-dask: pip install prefect-dask"
            ) from exc
        address = settings.flows.dask_address
        return DaskTaskRunner(address=address) if address else DaskTaskRunner()
    raise ValueError(f"flows.task_runner must be 'thread' or 'dask', not {kind!r}")


def budget_shares(total: int, parts: int) -> list[int]:
    """Split a per-run call budget over `parts` tasks that run at once, deterministically (the
    first `total % parts` get one more), so which turns get judged does not depend on which task
    happens to finish first — the thread pool and a Dask cluster give the same rewards."""
    if parts <= 0:
        return []
    base, extra = divmod(max(0, total), parts)
    return [base + (i < extra) for i in range(parts)]


class ConfiguredTaskRunner(TaskRunner[PrefectFuture[Any]]):
    """Delegates to the runner `task_runner(Settings())` builds when the flow run starts."""

    def __init__(self, runner: TaskRunner[Any] | None = None) -> None:
        self._fixed = runner  # tests and benchmarks may pin one; flows leave it None
        self._inner: TaskRunner[Any] | None = None
        super().__init__()

    @property
    def name(self) -> str:
        return f"configured({self._inner.name})" if self._inner else "configured"

    @property
    def inner(self) -> TaskRunner[Any]:
        if self._inner is None:
            raise RuntimeError("the task runner must be started before submitting work")
        return self._inner

    def duplicate(self) -> ConfiguredTaskRunner:
        return type(self)(self._fixed.duplicate() if self._fixed else None)

    def __enter__(self) -> ConfiguredTaskRunner:
        super().__enter__()
        inner = self._fixed or task_runner(Settings())
        self._inner = inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._inner is not None:
                self._inner.__exit__(*exc)
        finally:
            self._inner = None
            super().__exit__(*exc)

    def submit(
        self, task: Any, parameters: dict[str, Any], wait_for: Any = None, dependencies: Any = None
    ) -> PrefectFuture[Any]:
        return self.inner.submit(task, parameters, wait_for, dependencies)

    def map(
        self, task: Any, parameters: dict[str, Any], wait_for: Any = None
    ) -> PrefectFutureList[Any]:
        return self.inner.map(task, parameters, wait_for)

    def cancel_all(self) -> None:
        cancel = getattr(self._inner, "cancel_all", None)
        if cancel is not None:
            cancel()
