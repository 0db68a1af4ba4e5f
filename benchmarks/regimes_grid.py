"""The demo's methods x regimes x settings x seeds at equal compute (issue 18's table).

    PYTHONPATH=$PWD python benchmarks/regimes_grid.py --seeds 3,4,5              # run what is missing, print
    PYTHONPATH=$PWD python benchmarks/regimes_grid.py --seeds 3 --settings multi --report-only

Every method is read at equal **cost at scale** (trainer/compute.py: a generated token priced at
twice a trained token's forward+backward, NeMo RL's published 8B split) and at equal compute.

Settings: ``multi`` (``data.pool_size=512``: 32 steps a pass, a problem visited about 5 times in
160 steps) and ``single`` (the demo's pool of 2048: 128 steps a pass, 1.25 passes in 160 steps).
Every run goes through the demo's own ``_one_run`` (jobs/demo.py), one at a time in a fresh
process, with checkpoints off (they change nothing measured). Per (setting, regime, seed), the
selection methods run first; each budgeted method (plain GRPO, DAPO, the controls) then runs once,
until its compute reaches the largest compute of the selection methods of that cell
(``grpo.max_compute``), and is read at each selection method's compute from that one run. A
finished run is kept as ``<out>/<setting>/<regime>/<method>-seed<seed>/cell.json`` and never rerun,
so the grid can run in pieces; a budgeted cell records its budget, and a selection method whose
compute exceeds it reads NaN ("–").

Printed per setting and regime, markdown: steps, compute, generated tokens, final accuracy, the
flagged share of the picks after the first pass (steps > pool / N; noisy, wrong-key or rare-target
problems), and the accuracy area (mean accuracy over [0, C]) at each selection method's compute C,
mean ± sd over seeds and per seed. A table holds the seeds whose every method has run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_gradalign.jobs.demo import _one_run, recipe_path  # noqa: E402
from nemo_gradalign.jobs.demo_methods import STEP_ALLOWANCE, is_budgeted, method_overrides  # noqa: E402
from nemo_gradalign.trainer.config import load_embedded_recipe  # noqa: E402
from nemo_gradalign.trainer.metrics import read_metrics  # noqa: E402
from nemo_gradalign.trainer.summary import mean_area  # noqa: E402

SETTINGS = {"multi": ["data.pool_size=512"], "single": []}
REGIMES = ("noisy", "noisy_flip", "low_utility_shuffled", "imbalance_length")
METHODS = ("gradalign-memory", "gradalign-step-r1", "gradalign-round", "grpo", "dapo", "greso", "grpo-trusted",
           "grpo-pooltrusted")
COMMON = ["checkpointing.enabled=false"]
FLAG = {"imbalance_length": "target"}  # what the flagged share counts; else noisy (corrupted or wrong key)


def cell_path(out: Path, setting: str, regime: str, method: str, seed: int) -> Path:
    return out / setting / regime / f"{method}-seed{seed}" / "cell.json"


def run_cell(pool, out: Path, setting: str, regime: str, method: str, seed: int, budget: dict | None) -> dict:
    path = cell_path(out, setting, regime, method, seed)
    if path.is_file():
        return json.loads(path.read_text())
    extra = [] if budget is None else [f"grpo.max_compute={budget['compute']}",
                                       *([f"grpo.max_cost={budget['cost']}"] if "cost" in budget else []),
                                       f"grpo.max_num_steps={STEP_ALLOWANCE * budget['steps']}"]
    print(f"  {setting} {regime} {method} seed {seed}{' budget %.3g' % budget['compute'] if budget else ''} ...",
          flush=True)
    summary = pool.submit(_one_run, regime, method, seed, str(out / setting),
                          SETTINGS[setting] + COMMON + extra).result()
    last = [r for r in read_metrics(path.parent / "metrics.jsonl") if r["kind"] == "train"][-1]
    summary.update(generated_tokens=last["tokens/total_generated"], budget=budget, setting=setting, seed=seed)
    path.write_text(json.dumps(summary))
    print(f"    {summary['steps']} steps, {summary['compute'] / 1e6:.2f} M, {summary['wall_seconds']:.0f} s",
          flush=True)
    return summary


def run_grid(out: Path, settings, regimes, methods, seeds) -> None:
    selection = [m for m in methods if not is_budgeted(m)]
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        for seed in seeds:
            for setting in settings:
                for regime in regimes:
                    refs = [run_cell(pool, out, setting, regime, m, seed, None) for m in selection]
                    budget = ({"compute": max(r["compute"] for r in refs), "cost": max(r["cost"] for r in refs),
                               "steps": max(r["steps"] for r in refs)} if refs else None)
                    for m in methods:
                        if is_budgeted(m):
                            if budget is None and not cell_path(out, setting, regime, m, seed).is_file():
                                raise SystemExit(f"--methods: {m} needs a selection method of the same cell to "
                                                 "set its compute budget")
                            run_cell(pool, out, setting, regime, m, seed, budget)


def after_first_pass(cell: dict, steps_per_pass: int) -> float:
    shares = [s for step, s in cell["shares_by_step"] if step > steps_per_pass and s is not None]
    return statistics.fmean(shares) if shares else math.nan


def fmt(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def per_seed(values: list[float]) -> str:
    return " / ".join("–" if math.isnan(v) else f"{v:.3f}" for v in values)


def table(out: Path, setting: str, regime: str, methods, seeds) -> str | None:
    done = [s for s in seeds if all(cell_path(out, setting, regime, m, s).is_file() for m in methods)]
    if not done:  # only seeds whose every method has run: a partial seed would skew the means
        return None
    cells = {m: [json.loads(cell_path(out, setting, regime, m, s).read_text()) for s in done] for m in methods}
    refs, have = [m for m in methods if not is_budgeted(m)], list(methods)
    pool_size = load_embedded_recipe(recipe_path(regime), SETTINGS[setting]).data.pool_size
    steps_per_pass = pool_size // 16
    lines = [f"\n### {regime}, {setting} (pool {pool_size}, {steps_per_pass} steps a pass), seeds {done}\n",
             "| method | steps | cost at scale (M) | compute (M) | generated tokens (M) | final acc | "
             f"{FLAG.get(regime, 'noisy')} picked after pass 1 | distinct picked | top-32 share of picks | "
             + " | ".join(f"AUC @ {r}'s cost | per seed | AUC @ {r}'s compute" for r in refs) + " |",
             "|---" * (9 + 3 * len(refs)) + "|"]
    for m in have:
        row = cells[m]
        by_seed = {c["seed"]: c for c in row}
        aucs = []
        for r in refs:
            at_cost, at_compute = (areas_at(by_seed, cells[r], measure) for measure in ("cost", "compute"))
            aucs += [fmt(at_cost), per_seed(at_cost), fmt(at_compute)]
        lines.append(" | ".join([f"| {m}", fmt([c["steps"] for c in row], 0),
                                 fmt([c.get("cost", math.nan) / 1e6 for c in row], 2),
                                 fmt([c["compute"] / 1e6 for c in row], 2),
                                 fmt([c["generated_tokens"] / 1e6 for c in row], 2),
                                 fmt([c["final_acc"] for c in row]),
                                 fmt([after_first_pass(c, steps_per_pass) for c in row]),
                                 fmt([c.get("distinct_picked", math.nan) for c in row], 0),
                                 fmt([c.get("top32_share", math.nan) for c in row]), *aucs]) + " |")
    lines += [verdict(cells, r, [m for m in have if is_budgeted(m)], measure) for r in refs
              for measure in ("cost", "compute")]
    return "\n".join(lines)


def areas_at(by_seed: dict, ref_cells: list[dict], measure: str) -> list[float]:
    """Per seed of the reference: this run's accuracy area up to the reference's cost or compute
    (NaN for a cell run before costs were logged)."""
    return [mean_area(by_seed[c["seed"]].get(f"{measure}_curve", []), c.get(measure, math.nan))
            if c["seed"] in by_seed else math.nan for c in ref_cells]


def verdict(cells: dict, ref: str, baselines: list[str], measure: str = "cost") -> str:
    """At ``ref``'s cost (or compute): the method with the highest mean area, and ref minus each baseline."""
    every = {m: areas_at({c["seed"]: c for c in cells[m]}, cells[ref], measure) for m in [ref, *baselines]}
    mine = every[ref]
    means = {m: statistics.fmean(a) for m, a in every.items() if not any(math.isnan(x) for x in a)}
    diffs = [f"{b} {fmt([x - y for x, y in zip(mine, every[b])])}" for b in baselines]
    best = max(means, key=means.get) if means else "–"
    what = "cost at scale" if measure == "cost" else measure
    return f"\nAt {ref}'s {what}: highest mean AUC {best}; {ref} minus " + ", ".join(diffs) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--settings", default="multi,single", help="of multi, single")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="3,4,5")
    parser.add_argument("--out-dir", default="runs/regimes_grid")
    parser.add_argument("--report-only", action="store_true", help="print the tables of the cells already run")
    args = parser.parse_args()
    settings, regimes, methods = args.settings.split(","), args.regimes.split(","), args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    for s in settings:
        if s not in SETTINGS:
            parser.error(f"--settings: unknown setting {s!r}; choose from {', '.join(SETTINGS)}")
    for regime in regimes:
        try:
            recipe_path(regime)
        except ValueError as err:
            parser.error(f"--regimes: {err}")
    for m in methods:  # a bad name or a recipe that does not load fails before any run
        try:
            load_embedded_recipe(recipe_path(regimes[0]), [*method_overrides(m), *SETTINGS[settings[0]]])
        except ValueError as err:
            parser.error(f"--methods: {err}")
    out = Path(args.out_dir)
    if not args.report_only:
        run_grid(out, settings, regimes, methods, seeds)
    print(f"\nAUC: mean accuracy over [0, C], C the named selection method's cost at scale (trained tokens' "
          "forward+backward; a generated token 2, a forward 1/3) or compute (forward token-passes); budgeted "
          f"methods ({', '.join(m for m in methods if is_budgeted(m))}) ran once per cell until both the largest "
          "selection cost and compute were reached. Flagged share after pass 1: steps > pool / 16.")
    for setting in settings:
        for regime in regimes:
            text = table(out, setting, regime, methods, seeds)
            if text:
                print(text)


if __name__ == "__main__":
    main()
