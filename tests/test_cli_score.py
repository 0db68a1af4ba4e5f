"""`nemo-gradalign score` end to end as a user runs it: real subprocess, 2 gloo ranks (TP=2)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

SMALL = ["--pool-size", "24", "--val-size", "48", "--rollouts", "4", "--val-rollouts", "4",
         "--warmup-steps", "40"]


def _run(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "nemo_gradalign.cli", "score", *args,
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_score_job_scores_every_method_at_tp2(tmp_path):
    proc = _run(SMALL, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "What each method picks" in proc.stdout and "TP=2 PP=1 DP=1" in proc.stdout
    res = json.loads((tmp_path / "score_results.json").read_text())
    assert set(res["methods"]) == {"gradalign", "simacc", "dot", "learnalign", "accgreedy", "accfilter", "random", "dapo"}
    problems = res["problems"]
    assert len(problems) == 24 and sum(p["corrupted"] for p in problems) == 12
    for method, out in res["methods"].items():
        assert len(out["scores"]) == 24 and not any(math.isnan(s) for s in out["scores"]), method
        assert len(out["picked"]) <= res["keep"] == 6
    ga = res["methods"]["gradalign"]
    for i, p in enumerate(problems):
        if not p["informative"]:
            assert ga["scores"][i] == -math.inf and i not in ga["picked"]
        else:
            assert -1.0 <= ga["scores"][i] <= 1.0


def test_score_job_rejects_bad_arguments(tmp_path):
    proc = _run(["--corrupt-fraction", "1.5"], tmp_path)
    assert proc.returncode == 2 and "score.corrupt_fraction" in proc.stderr and "1.5" in proc.stderr
    proc = _run(["--tp", "0"], tmp_path)
    assert proc.returncode == 2 and "--tp" in proc.stderr and "positive" in proc.stderr


@pytest.mark.slow
def test_untrained_policy_gives_a_clear_empty_validation_gradient_error(tmp_path):
    """No warm-up: every rollout is wrong, so no validation problem has a gradient."""
    proc = _run(["--pool-size", "4", "--val-size", "4", "--warmup-steps", "0"], tmp_path)
    assert proc.returncode == 1
    assert "EmptyReferenceGradient" in proc.stderr and "same reward" in proc.stderr
    assert "Traceback" not in proc.stderr
