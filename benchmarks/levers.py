"""GradAlign's levers side by side: each variant's compute, noisy-pick share and accuracy area,
against plain GRPO and DAPO read at that variant's own compute, seed by seed.

Every variant is the demo's GradAlign (round schedule) plus overrides; plain GRPO and DAPO run
once per seed until the largest compute any variant of that seed spent. Two runs at a time.
  python benchmarks/levers.py [--seeds 0,1,2] [--regime noisy] [--out runs/levers] [--variants a,b]
Tune on seeds 0-2 only; tables for docs/results.md come from other seeds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from equal_compute import mean_std_md  # benchmarks/, the script's own folder
from nemo_gradalign.jobs.demo import _one_run
from nemo_gradalign.jobs.demo_methods import STEP_ALLOWANCE
from nemo_gradalign.trainer.summary import mean_area, run_summary

VAL_SMALL = ["++gradalign.validation.max_problems=64", "++gradalign.validation.rollouts_per_problem=4"]
VARIANTS = {
    "default": [],
    "significance z=1": ["++gradalign.significance=1.0"],
    "validation 64x4": VAL_SMALL,
    "validation 64x4 + significance z=1": [*VAL_SMALL, "++gradalign.significance=1.0"],
    "validation 64x4 refresh 8": [*VAL_SMALL, "++gradalign.refresh_every=8"],
    "significance z=2": ["++gradalign.significance=2.0"],
    "adam-preconditioned G": ["++gradalign.precondition=adam"],
    "validation 64x4 + adam": [*VAL_SMALL, "++gradalign.precondition=adam"],
    "validation 64x4 + significance z=2": [*VAL_SMALL, "++gradalign.significance=2.0"],
    "one problem per pass": ["++gradalign.pack_rows=null"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--regime", default="noisy")
    parser.add_argument("--out", default="runs/levers")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.variants.split(",")
    ctx = multiprocessing.get_context("spawn")
    runs: dict[tuple[str, int], dict] = {}
    with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        jobs = {(name, s): pool.submit(_one_run, args.regime, "gradalign", s,
                                       f"{args.out}/{_slug(name)}", VARIANTS[name])
                for s in seeds for name in names}
        runs.update({key: job.result() for key, job in jobs.items()})
        budgets = {s: max(runs[(n, s)]["compute"] for n in names) for s in seeds}
        steps = {s: max(runs[(n, s)]["steps"] for n in names) for s in seeds}
        for s in seeds:  # a baseline from an earlier sweep is reused when it ran far enough
            for m in ("grpo", "dapo"):
                earlier = Path(args.out) / "baselines" / args.regime / f"{m}-seed{s}" / "metrics.jsonl"
                if earlier.is_file() and run_summary(earlier, args.regime)["compute"] >= budgets[s]:
                    runs[(m, s)] = run_summary(earlier, args.regime)
        jobs = {(m, s): pool.submit(_one_run, args.regime, m, s, f"{args.out}/baselines",
                                    [f"grpo.max_compute={budgets[s]}",
                                     f"grpo.max_num_steps={STEP_ALLOWANCE * steps[s]}"])
                for s in seeds for m in ("grpo", "dapo") if (m, s) not in runs}
        runs.update({key: job.result() for key, job in jobs.items()})
    print(f"{args.regime} regime, seeds {seeds}: baselines read at each variant's own compute")
    print("| variant | compute (M) | step s | noisy picked | AUC @ compute | GRPO AUC @ same | "
          "DAPO AUC @ same | Δ vs GRPO | Δ vs DAPO |")
    print("|---|---|---|---|---|---|---|---|---|")
    table = {}
    for name in names:
        mine = [runs[(name, s)] for s in seeds]
        area = [mean_area(r["compute_curve"], r["compute"]) for r in mine]
        grpo = [mean_area(runs[("grpo", s)]["compute_curve"], r["compute"]) for s, r in zip(seeds, mine)]
        dapo = [mean_area(runs[("dapo", s)]["compute_curve"], r["compute"]) for s, r in zip(seeds, mine)]
        table[name] = {"area": area, "grpo": grpo, "dapo": dapo,
                       "compute": [r["compute"] for r in mine], "share": [r["run_share"] for r in mine]}
        print(" | ".join([f"| {name}", mean_std_md([r["compute"] / 1e6 for r in mine], 2),
                          mean_std_md([r["seconds"] / r["steps"] for r in mine], 2), mean_std_md([r["run_share"] for r in mine]),
                          mean_std_md(area), mean_std_md(grpo), mean_std_md(dapo), mean_std_md([a - b for a, b in zip(area, grpo)]),
                          mean_std_md([a - b for a, b in zip(area, dapo)])]) + " |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"levers-{_slug(args.variants)[:60]}.json").write_text(json.dumps({"seeds": seeds, "table": table}, indent=1))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


if __name__ == "__main__":
    main()
