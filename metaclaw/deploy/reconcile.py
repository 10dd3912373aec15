"""Make the running policy server serve what the ledger says is promoted.

Why: a promotion is recorded first and the server told afterwards; a swap the server refused
(an adapter it could not load at that moment, a missing admin token, a restart racing the
promotion) or a hand-made `POST /admin/adapter` leaves the two disagreeing — users are served
weights the registry does not name — until the server restarts. So every deploy flow run asks
the server (`GET /admin/adapter`) what it serves, and when that is not the promoted checkpoint
(or the base model, when none is) it sends the swap again and reports the mismatch.

The ledger stays the source of truth: nothing here writes to it. A server that is not running
is not a mismatch (it loads the promoted checkpoint at its next start); a Tinker checkpoint is
compared only when the server runs the Tinker engine (the local engine cannot serve one).
"""

from __future__ import annotations

from dataclasses import dataclass

from metaclaw.config import Settings
from metaclaw.deploy.durable import NotServableError, check_servable, is_tinker
from metaclaw.deploy.notify import notify_policy_server, served_adapter
from metaclaw.deploy.store import read_book
from metaclaw.endpoints import policy_engine


@dataclass(frozen=True)
class Reconciliation:
    status: str  # in_sync | resent | mismatch | unreachable | skipped
    expected: str | None  # the promoted checkpoint (None: the base model)
    served: str | None  # what the server said it serves
    detail: str

    @property
    def problem(self) -> bool:
        """The server disagreed with the ledger (fixed now, or still)."""
        return self.status in ("resent", "mismatch")


def _label(checkpoint_id: str | None) -> str:
    return checkpoint_id or "the base model"


def reconcile(settings: Settings) -> Reconciliation:
    """Compare the server's adapter with the promoted checkpoint; re-send the swap on a
    mismatch."""
    promoted = read_book(settings.paths).promoted
    expected = promoted.checkpoint_id if promoted else None
    recorded = promoted.path if promoted else None
    if is_tinker(recorded) and policy_engine(settings) != "tinker":
        return Reconciliation(
            "skipped",
            expected,
            None,
            f"{expected} lives on Tinker; the policy server runs the local engine",
        )
    served = served_adapter(settings)
    if not served.reachable:
        return Reconciliation(
            "unreachable",
            expected,
            None,
            f"{served.error}; it loads {_label(expected)} at its next start",
        )
    if served.error is not None:
        return Reconciliation(
            "mismatch", expected, None, f"cannot tell what the policy server serves: {served.error}"
        )
    if served.checkpoint_id == expected:
        return Reconciliation(
            "in_sync",
            expected,
            served.checkpoint_id,
            f"policy server serves {_label(expected)}, as the ledger says",
        )
    found = (
        f"the policy server served {_label(served.checkpoint_id)} while the ledger has "
        f"{_label(expected)} promoted"
    )
    path = None
    if promoted is not None:
        try:
            path = check_servable(recorded, settings.home, promoted.checkpoint_id)
        except NotServableError as exc:
            return Reconciliation(
                "mismatch",
                expected,
                served.checkpoint_id,
                f"{found}; the swap cannot be re-sent: {exc}",
            )
    notice = notify_policy_server(settings, expected, path)
    if notice.status == "swapped":
        return Reconciliation(
            "resent", expected, served.checkpoint_id, f"{found}; swap re-sent: {notice.detail}"
        )
    return Reconciliation(
        "mismatch",
        expected,
        served.checkpoint_id,
        f"{found}; re-sending the swap failed: {notice.detail}",
    )
