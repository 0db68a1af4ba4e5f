"""Equal-steps and equal-compute tables from a demo's summary, one per selection method.

`python benchmarks/equal_compute.py runs/demo/noisy/demo_summary.json` (or, for run folders laid
out as the demo lays them, `--runs runs/demo/noisy --seeds 3,4,5 --methods gradalign-round,grpo,dapo`)
prints, for each
GradAlign variant (or paper baseline) in the demo, its row and every budgeted baseline's
(plain GRPO, DAPO) read at that variant's steps and compute, seed by seed, plus the per-seed
difference in accuracy area. Markdown, to paste into docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from nemo_gradalign.jobs.demo import compare
from nemo_gradalign.jobs.demo_methods import is_budgeted
from nemo_gradalign.trainer.summary import run_summary


def mean_std_md(values, digits=3):
    """mean ± std for a markdown table (one value: just it)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def tables(summary: dict) -> str:
    runs = summary["summaries"]
    wall = summary.get("wall_seconds")
    out = [f"seeds {summary['seeds']}" + (f", whole demo {wall:.0f} s wall" if wall else "") + "\n"]
    for ref in (m for m in runs if not is_budgeted(m)):
        rows = compare(runs, ref)
        out.append(f"\nreference: {ref}\n")
        out.append("| method | steps | compute (M) | step s | acc @ ref steps | AUC @ ref steps "
                   "| acc @ ref compute | AUC @ ref compute | ΔAUC compute (ref − method) |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for method in [ref, *(m for m in runs if is_budgeted(m))]:
            r, c = runs[method], rows[method]
            delta = [a["auc_compute"] - b["auc_compute"] for a, b in zip(rows[ref], c)]
            out.append(" | ".join([
                f"| {method}", mean_std_md([x["steps"] for x in r], 0), mean_std_md([x["compute"] / 1e6 for x in r], 2),
                mean_std_md([x["seconds"] for x in r], 0), mean_std_md([x["acc_at_steps"] for x in c]),
                mean_std_md([x["auc_steps"] for x in c]), mean_std_md([x["acc_at_compute"] for x in c]),
                mean_std_md([x["auc_compute"] for x in c]), "–" if method == ref else mean_std_md(delta)]) + " |")
        per_seed = {m: [round(x["auc_compute"], 3) for x in rows[m]] for m in runs}
        out.append(f"\nAUC @ {ref}'s compute, per seed: {per_seed}")
    return "\n".join(out)


def from_runs(root: str, methods: list[str], seeds: list[int]) -> dict:
    """A demo summary read back from run folders (``<root>/<method>-seed<seed>/metrics.jsonl``)."""
    return {"seeds": seeds, "summaries": {
        m: [run_summary(Path(root) / f"{m}-seed{s}" / "metrics.jsonl", Path(root).name) for s in seeds]
        for m in methods}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", nargs="?", help="a demo_summary.json")
    parser.add_argument("--runs", help="a folder of <method>-seed<seed> run folders instead")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="gradalign,grpo,dapo")
    parser.add_argument("--plot", help="also write the demo's figure here (PNG)")
    args = parser.parse_args()
    if args.runs:
        data = from_runs(args.runs, args.methods.split(","), [int(s) for s in args.seeds.split(",")])
    else:
        data = json.loads(Path(args.summary).read_text())
    print(tables(data))
    if args.plot:
        from nemo_gradalign.trainer.plots import demo_figure

        print("plot:", demo_figure(data["summaries"], "noisy", Path(args.plot)))
