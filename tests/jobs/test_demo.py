"""`nemo-gradalign demo` end to end at a tiny size: the table, the plot and the summary."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_prints_table_and_writes_plot(tmp_path):
    tiny = ["grpo.max_num_steps=4", "grpo.val_period=2", "data.pool_size=128", "data.validation_size=16",
            "data.eval_size=16", "data.warmup_size=400", "gradalign.chunk_size=32",
            "gradalign.steps_per_round=2", "grpo.num_prompts_per_step=8"]
    proc = subprocess.run([sys.executable, "-m", "nemo_gradalign.cli", "demo", "--seeds", "0",
                           "--methods", "gradalign,accgreedy", "--out-dir", str(tmp_path), *tiny],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GradAlign demo: noisy regime" in proc.stdout and "accgreedy" in proc.stdout
    png = tmp_path / "noisy" / "demo.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "noisy" / "demo_summary.json").read_text())
    for method in ("gradalign", "accgreedy"):
        [run] = summary["summaries"][method]
        assert [s for s, _ in run["curve"]] == [0, 2, 4]
        assert 0.0 <= run["first_round_share"] <= 1.0
