"""One table per setting of benchmarks/regimes_grid.py's runs, read at one method's budget: does it
beat every baseline at equal cost at scale, and where it does not, is it within one standard
deviation of the best?

    PYTHONPATH=$PWD python benchmarks/grid_summary.py --out-dir runs/grid_report --ref gradalign \\
        --methods gradalign,gradalign-memory,grpo,dapo,greso,grpo-trusted,grpo-pooltrusted --seeds 3,4,5

Per (setting, regime), over the seeds every method has run: each method's accuracy area (mean
held-out accuracy over [0, B]) at the reference's cost at scale, compute and generated tokens (B
per seed: what the reference spent), mean ± std; the flagged share of the picks after the first
pass, distinct problems picked and the top-32 share of picks. The verdict column compares areas at
equal cost: "best" (the reference's mean is the highest), "within 1 sd" (below the best by no more
than the larger of the two standard deviations), or "behind".
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generated_budget import generated_curve  # noqa: E402
from regimes_grid import REGIMES, SETTINGS, after_first_pass, cell_path  # noqa: E402

from nemo_gradalign.jobs.demo import recipe_path  # noqa: E402
from nemo_gradalign.jobs.demo_methods import DEFAULT_GRADALIGN  # noqa: E402
from nemo_gradalign.trainer.config import load_embedded_recipe  # noqa: E402
from nemo_gradalign.trainer.summary import mean_area  # noqa: E402


def _cells(out: Path, setting: str, regime: str, method: str, seeds: list[int]) -> list[dict]:
    cells = []
    for seed in seeds:
        path = cell_path(out, setting, regime, method, seed)
        cell = json.loads(path.read_text())
        cell["generated_curve"] = generated_curve(path.parent / "metrics.jsonl")
        cells.append(cell)
    return cells


def _mean_sd(values: list[float]) -> tuple[float, float]:
    ok = [v for v in values if not math.isnan(v)]
    if len(ok) < len(values) or not ok:
        return math.nan, math.nan
    return statistics.fmean(ok), (statistics.stdev(ok) if len(ok) > 1 else 0.0)


def _fmt(mean: float, sd: float, digits: int = 3) -> str:
    return "–" if math.isnan(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def setting_table(out: Path, setting: str, methods: list[str], ref: str, seeds: list[int]) -> str:
    lines = [f"\n### {setting}: areas at {ref}'s budget, seeds {seeds}\n",
             "| regime | method | AUC @ equal cost at scale | @ equal compute | @ equal generated tokens | "
             "flagged picks after pass 1 | distinct picked | top-32 share | verdict at equal cost |",
             "|---" * 9 + "|"]
    for regime in REGIMES:
        if not all(cell_path(out, setting, regime, m, s).is_file() for m in methods for s in seeds):
            continue
        cells = {m: _cells(out, setting, regime, m, seeds) for m in methods}
        budget = {measure: [c[measure] if measure != "generated" else c["generated_tokens"] for c in cells[ref]]
                  for measure in ("cost", "compute", "generated")}
        steps_per_pass = load_embedded_recipe(recipe_path(regime), SETTINGS[setting]).data.pool_size // 16
        areas = {m: {measure: _mean_sd([mean_area(c[f"{measure}_curve"], b) for c, b in zip(cells[m], budget[measure])])
                     for measure in budget} for m in methods}
        best = max(methods, key=lambda m: -math.inf if math.isnan(areas[m]["cost"][0]) else areas[m]["cost"][0])
        (top, top_sd), (mine, mine_sd) = areas[best]["cost"], areas[ref]["cost"]
        verdict = ("best" if best == ref else "within 1 sd" if top - mine <= max(top_sd, mine_sd) else "behind")
        for m in methods:
            row = cells[m]
            auc = [_fmt(*areas[m][measure]) for measure in ("cost", "compute", "generated")]
            if m == best:
                auc[0] = f"**{auc[0]}**"
            shares = _mean_sd([after_first_pass(c, steps_per_pass) for c in row])
            extra = [_fmt(*shares, 2), _fmt(*_mean_sd([c.get("distinct_picked", math.nan) for c in row]), 0),
                     _fmt(*_mean_sd([c.get("top32_share", math.nan) for c in row]), 2)]
            lines.append(f"| {regime} | {m} | " + " | ".join(auc + extra) + f" | {verdict if m == ref else ''} |")
    return "\n".join(lines)


def compact_table(out: Path, settings: list[str], methods: list[str], ref: str, seeds: list[int]) -> str:
    """One row per (setting, regime): each method's area at the reference's cost at scale, the best in bold."""
    lines = ["| setting | regime | " + " | ".join(methods) + " |", "|---" * (2 + len(methods)) + "|"]
    for setting in settings:
        for regime in REGIMES:
            if not all(cell_path(out, setting, regime, m, s).is_file() for m in methods for s in seeds):
                continue
            cells = {m: _cells(out, setting, regime, m, seeds) for m in methods}
            areas = {m: _mean_sd([mean_area(c["cost_curve"], r["cost"]) for c, r in zip(cells[m], cells[ref])])
                     for m in methods}
            best = max(methods, key=lambda m: -math.inf if math.isnan(areas[m][0]) else areas[m][0])
            row = [f"**{_fmt(*areas[m])}**" if m == best else _fmt(*areas[m]) for m in methods]
            lines.append(f"| {setting} | {regime} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default="runs/regimes_grid")
    parser.add_argument("--ref", default="gradalign", help="the method whose budget every method is read at")
    parser.add_argument("--methods", required=True)
    parser.add_argument("--settings", default="multi,single")
    parser.add_argument("--seeds", default="3,4,5")
    parser.add_argument("--compact", action="store_true", help="one row per cell: areas at equal cost only")
    args = parser.parse_args()
    ref = DEFAULT_GRADALIGN if args.ref == "gradalign" else args.ref
    methods = [DEFAULT_GRADALIGN if m == "gradalign" else m for m in args.methods.split(",")]
    if ref not in methods:
        parser.error(f"--ref {ref} must be one of --methods")
    seeds, settings = [int(s) for s in args.seeds.split(",")], args.settings.split(",")
    if args.compact:
        print(compact_table(Path(args.out_dir), settings, methods, ref, seeds))
        return
    for setting in settings:
        print(setting_table(Path(args.out_dir), setting, methods, ref, seeds))


if __name__ == "__main__":
    main()
