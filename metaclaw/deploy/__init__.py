"""Deploy: evaluate candidate checkpoints, promote only winners, hot-swap, roll back.

Public API (docs/deploy.md):
- `registry` — statuses, the `TRANSITIONS` table, `Book` (states replayed from the
  `checkpoints` table), `plan_promote` / `plan_reject` / `plan_rollback` (pure row planners),
  `TransitionError`.
- `split` — the held-out split by session plus prompt digest: `held_out_sql(settings)` (the
  trainer's predicate), `held_out_turn_ids` (the same rule in Python), `split_id(settings)`.
- `stats` — `wilson_interval`, `pair_score`, `win_rate`.
- `guards` — `is_degenerate`, `kl_estimate`, `check_guards`, `decide`.
- `pairwise` — the pairwise judge prompt, `parse_verdict`, `PairwiseJudge`.
- `evalset` — `build_eval_set` (held-out ledger prompts + `deploy.prompts_file`).
- `sampling` — `BackendSampler` (any TrainingBackend), `TinkerSampler`, `make_sampler`.
- `evaluate` — `evaluate(...)` → `Evaluation` (the full comparison and the decision).
- `deployer` — `promote`, `reject`, `rollback`, and the gate: `prepare` → `assess` → `record`
  (`run_gate` chains them).
- `notify` — `notify_policy_server` (the hot-swap request).

Importing this package loads nothing heavy; torch and tinker load when sampling starts.
"""

from metaclaw.deploy.split import held_out_sql, held_out_turn_ids, split_id

__all__ = ["held_out_sql", "held_out_turn_ids", "split_id"]
