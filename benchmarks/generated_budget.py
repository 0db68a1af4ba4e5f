"""The demo grid read at equal *generated* tokens (benchmarks/regimes_grid.py's runs): at scale
generation, not the backward, dominates a GRPO step, so next to the grid's equal-compute areas this
prints each method's accuracy area over the same budget of generated tokens (training rollouts +
the trusted validation prompts' rollouts): per seed the least any method of the cell generated
(the budgeted baselines ran to equal compute, not to equal generation), mean ± std over seeds.
  python benchmarks/generated_budget.py --out-dir runs/grid [--settings multi,single] [--seeds 3,4,5]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from nemo_gradalign.trainer.summary import mean_area

def generated_curve(metrics: Path) -> list[tuple[float, float]]:
    """(tokens generated so far, training and the trusted set's together, held-out accuracy) at every evaluation."""
    generated, curve = {0: 0.0}, []
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    for r in records:
        if r["kind"] == "train":
            generated[r["step"]] = r["tokens/total_generated"]  # the trusted set's rollouts included
    for r in records:
        if r["kind"] == "eval" and r["step"] in generated:
            curve.append((generated[r["step"]], r["val:accuracy"]))
    return curve


def _fmt(values: list[float]) -> str:
    ok = [v for v in values if not math.isnan(v)]
    if not ok:
        return "–"
    spread = f" ± {statistics.stdev(ok):.3f}" if len(ok) > 1 else ""
    return f"{statistics.mean(ok):.3f}{spread} ({' / '.join('–' if math.isnan(v) else f'{v:.3f}' for v in values)})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--settings", default="multi,single")
    parser.add_argument("--seeds", default="3,4,5")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    for setting in args.settings.split(","):
        for regime in sorted(p.name for p in (Path(args.out_dir) / setting).iterdir() if p.is_dir()):
            folder = Path(args.out_dir) / setting / regime
            methods = sorted({p.name.rsplit("-seed", 1)[0] for p in folder.glob("*-seed*")})
            budgets = {}
            for seed in seeds:
                runs = [folder / f"{m}-seed{seed}" / "metrics.jsonl" for m in methods]
                if all(r.is_file() for r in runs):
                    budgets[seed] = min(generated_curve(r)[-1][0] for r in runs)
            if not budgets:
                continue
            print(f"\n{setting} / {regime}: AUC over the same generated tokens per seed "
                  f"({', '.join(f'{b / 1e6:.2f} M' for b in budgets.values())}), seeds {list(budgets)}")
            for method in methods:
                areas = []
                for seed, budget in budgets.items():
                    metrics = folder / f"{method}-seed{seed}" / "metrics.jsonl"
                    areas.append(mean_area(generated_curve(metrics), budget) if metrics.is_file() else math.nan)
                print(f"  {method:18s} {_fmt(areas)}")


if __name__ == "__main__":
    main()
