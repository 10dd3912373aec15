"""Deploy: evaluate candidate checkpoints, promote only winners, hot-swap, roll back.

Public API (docs/deploy.md):
- `registry` — statuses, the `TRANSITIONS` table, `Book` (states replayed from the
  `checkpoints` table), `plan_promote` / `plan_reject` / `plan_rollback` (pure row planners),
  `TransitionError`.
- `split` — the held-out split by session plus prompt digest: `held_out_sql(settings)` (the
  trainer's predicate), `held_out_turn_ids` (the same rule in Python), `split_id(settings)`.
- `stats` — `pair_score`, `prompt_outcome`, `sign_test` (exact, ties left out) with
  `spend_alpha` (α·6/(π²k²) for the k-th decision against one current policy); `win_rate` /
  `wilson_interval` for reports.
- `guards` — `is_degenerate`, `kl_estimate`, `check_guards`, `decide`.
- `pairwise` — the pairwise judge prompt, `parse_verdict`, `PairwiseJudge`.
- `evalset` — `build_eval_set` (held-out ledger prompts + `deploy.prompts_file`).
- `sampling` — `BackendSampler` (any TrainingBackend), `TinkerSampler`, `make_sampler`;
  `replycache` — the current policy's replies, kept between decisions.
- `evaluate` — `evaluate(...)` → `Evaluation` (the full comparison and the decision).
- `deployer` — `promote`, `reject`, `rollback`, and the gate: `prepare` → `assess` → `record`
  (`run_gate` chains them).
- `notify` — `notify_policy_server` (the hot-swap request), `served_adapter`;
  `reconcile` — make a running policy server serve what the ledger promoted.

Importing this package loads nothing heavy; torch and tinker load when sampling starts.
"""

from metaclaw.deploy.split import held_out_sql, held_out_turn_ids, split_id

__all__ = ["held_out_sql", "held_out_turn_ids", "split_id"]
