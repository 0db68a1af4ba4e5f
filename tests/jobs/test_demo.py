"""`nemo-gradalign demo` end to end at a tiny size: the table, the plot and the summary, with the
budgeted baselines run to GradAlign's compute and read at its steps and compute."""

from __future__ import annotations

import json
import math
import subprocess
import sys


def test_demo_prints_table_and_runs_baselines_to_gradaligns_compute(tmp_path):
    tiny = ["grpo.max_num_steps=4", "grpo.val_period=2", "data.pool_size=128", "data.validation_size=16",
            "data.eval_size=16", "data.warmup_size=400", "gradalign.chunk_size=32",
            "gradalign.steps_per_round=2", "grpo.num_prompts_per_step=8", "checkpointing.enabled=false"]
    proc = subprocess.run([sys.executable, "-m", "nemo_gradalign.cli", "demo", "--seeds", "0",
                           "--methods", "gradalign-round,grpo,dapo", "--out-dir", str(tmp_path), *tiny],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GradAlign demo: noisy regime" in proc.stdout and "dapo" in proc.stdout
    png = tmp_path / "noisy" / "demo.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "noisy" / "demo_summary.json").read_text())
    [ga] = summary["summaries"]["gradalign-round"]
    assert [s for s, _ in ga["curve"]] == [0, 2, 4] and 0.0 <= ga["first_round_share"] <= 1.0
    for baseline in ("grpo", "dapo"):
        [run] = summary["summaries"][baseline]
        computes, costs = [c for c, _ in run["compute_curve"]], [c for c, _ in run["cost_curve"]]
        # ran past GradAlign's steps until both its compute and its cost at scale reached GradAlign's,
        # and not one step more
        assert run["steps"] > ga["steps"] and computes[-1] >= ga["compute"] and costs[-1] >= ga["cost"]
        lines = (tmp_path / "noisy" / f"{baseline}-seed0" / "metrics.jsonl").read_text().splitlines()
        steps_before = [r for r in map(json.loads, lines) if r["kind"] == "train"][-2]
        assert steps_before["compute/total"] < ga["compute"] or steps_before["cost/total"] < ga["cost"]
        [cmp] = summary["compare"][baseline]
        assert all(math.isfinite(cmp[k]) for k in ("auc_steps", "auc_compute", "auc_cost", "acc_at_steps",
                                                   "acc_at_compute"))
        assert cmp["acc_at_steps"] == dict(run["curve"])[4]  # the evaluation at GradAlign's step count
