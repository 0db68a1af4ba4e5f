"""Equal-steps and equal-compute tables from a demo's summary, one per selection method.

`python benchmarks/equal_compute.py runs/demo/noisy/demo_summary.json` prints, for each
GradAlign variant (or paper baseline) in the demo, its row and every budgeted baseline's
(plain GRPO, DAPO) read at that variant's steps and compute, seed by seed, plus the per-seed
difference in accuracy area. Markdown, to paste into the README.
"""

from __future__ import annotations

import json
import statistics
import sys

from nemo_gradalign.jobs.demo import compare
from nemo_gradalign.jobs.demo_methods import is_budgeted


def _ms(values, digits=3):
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def tables(summary: dict) -> str:
    runs = summary["summaries"]
    out = [f"seeds {summary['seeds']}, whole demo {summary['wall_seconds']:.0f} s wall\n"]
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
                f"| {method}", _ms([x["steps"] for x in r], 0), _ms([x["compute"] / 1e6 for x in r], 2),
                _ms([x["seconds"] for x in r], 0), _ms([x["acc_at_steps"] for x in c]),
                _ms([x["auc_steps"] for x in c]), _ms([x["acc_at_compute"] for x in c]),
                _ms([x["auc_compute"] for x in c]), "–" if method == ref else _ms(delta)]) + " |")
        per_seed = {m: [round(x["auc_compute"], 3) for x in rows[m]] for m in runs}
        out.append(f"\nAUC @ {ref}'s compute, per seed: {per_seed}")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables(json.loads(open(sys.argv[1]).read())))
