"""Deploy tasks: pick the candidate, evaluate it, record the verdict (metaclaw.deploy.deployer).

No task caches (`NO_CACHE`): each run must read the registry afresh. Retries are safe: picking
and recording append rows with stable ids, and evaluation writes nothing.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from metaclaw.config import Settings
from metaclaw.deploy.deployer import Assessment, GateOutcome, Prepared, assess, prepare, record
from metaclaw.deploy.reconcile import Reconciliation, reconcile
from metaclaw.runtime_priority import background_priority


@task(name="reconcile-policy-server", retries=1, retry_delay_seconds=[5], cache_policy=NO_CACHE)
def reconcile_policy_server(settings: Settings) -> Reconciliation:
    """Re-send the swap when the running policy server does not serve the promoted checkpoint
    (a refused or lost hot-swap); reports what it found."""
    return reconcile(settings)


@task(name="select-candidate", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def select_candidate(settings: Settings, checkpoint_id: str | None, actor: str) -> Prepared:
    """The newest candidate (or the one named); older ones are rejected as superseded."""
    return prepare(settings, checkpoint_id, actor=actor)


@task(name="evaluate-candidate", retries=1, retry_delay_seconds=[30], cache_policy=NO_CACHE)
def evaluate_candidate(settings: Settings, prepared: Prepared) -> Assessment:
    """Sample candidate and current policy, judge pairs both ways, apply the guards. A judge
    outage raises (and is retried); a broken candidate is a verdict, not an error."""
    with background_priority(settings.training):  # users first: the policy server wins the CPU
        return assess(settings, prepared)


@task(name="record-decision", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def record_decision(
    settings: Settings, prepared: Prepared, assessment: Assessment, actor: str
) -> GateOutcome:
    """Promote (and hot-swap the policy server) or reject; nothing if the world moved on."""
    return record(settings, prepared, assessment, actor=actor)
