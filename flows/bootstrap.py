"""Server-side objects every MetaClaw deployment relies on, created idempotently at start-up.

- Global concurrency limits: one trainer and one skills writer at a time, across deployments,
  ad-hoc runs and machines (a deployment's own `concurrency_limit` only covers that deployment).
- An automation that marks a flow run Crashed when its heartbeats stop: the open-source server has
  no zombie detection, so a SIGKILLed run would otherwise stay Running forever.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

CONCURRENCY_LIMITS = {"metaclaw-training": 1, "metaclaw-skills-writer": 1}
CRASH_AUTOMATION = "metaclaw: no heartbeat → Crashed"
HEARTBEAT_GRACE = timedelta(seconds=90)  # > PREFECT_FLOWS_HEARTBEAT_FREQUENCY (30 s in `up`)
_FINAL = ("Completed", "Failed", "Cancelled", "Crashed")


def crash_automation() -> AutomationCore:
    return AutomationCore(
        name=CRASH_AUTOMATION,
        description="A flow run whose heartbeats stopped (its process died) is marked Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in _FINAL)},
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=HEARTBEAT_GRACE,
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message="no heartbeat")],
    )


def bootstrap() -> list[str]:
    """Create what is missing; returns what was created (empty on a second run)."""
    created = []
    with get_client(sync_client=True) as client:
        existing = {limit.name for limit in client.read_global_concurrency_limits(limit=200)}
        for name, slots in CONCURRENCY_LIMITS.items():
            if name not in existing:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=slots)
                )
                created.append(f"concurrency limit {name}={slots}")
        if not client.read_automations_by_name(CRASH_AUTOMATION):
            client.create_automation(crash_automation())
            created.append(f"automation {CRASH_AUTOMATION!r}")
    return created
