"""Clean held-out accuracy: mean sampled pass rate (temperature of the recipe) per problem."""

from __future__ import annotations

from collections import defaultdict

from nemo_gradalign.trainer.rollouts import collect_rollouts


def evaluate(model, problems, samples: int, seed: int, temperature: float) -> dict:
    """val:accuracy plus a per-op and per-length breakdown. The same sampling noise is used at
    every evaluation (salt "eval"), so curves differ by the policy, not by luck."""
    rollouts = collect_rollouts(model, problems, samples, seed, "eval", temperature)
    by: dict[str, list[float]] = defaultdict(list)
    for problem, r in zip(problems, rollouts):
        by[f"val:accuracy/{problem.op}"].append(r.pass_rate)
        by[f"val:accuracy/len{len(problem.digits)}"].append(r.pass_rate)
    out = {"val:accuracy": sum(r.pass_rate for r in rollouts) / len(rollouts)}
    out.update({k: sum(v) / len(v) for k, v in sorted(by.items())})
    return out
