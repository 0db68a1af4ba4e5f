"""Real training runs as a user starts them (subprocess, spawned gloo ranks): exact resume after
kill -9, and TP=2 picking what TP=1 picks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_run_folder import records

RECIPE = str(Path(__file__).parents[2] / "recipes" / "embedded" / "noisy.yaml")
TINY = ["grpo.num_prompts_per_step=8", "grpo.val_period=4", "data.pool_size=256",
        "data.validation_size=32", "data.eval_size=32", "data.warmup_size=500",
        "gradalign.chunk_size=32", "gradalign.steps_per_round=2", "checkpointing.save_period=2"]


def _cmd(log_dir, *extra):
    return [sys.executable, "-m", "nemo_gradalign.cli", "train", "--config", RECIPE, *TINY,
            f"logger.log_dir={log_dir}", *extra]


def killed_and_resumed(cmd, tmp_path, kill_at: int, last: int) -> tuple[list[dict], list[dict], int]:
    """A run straight through, and the same run SIGKILLed (launcher and ranks) once its step-``kill_at``
    checkpoint exists, then resumed: (records of the first, of the second, how many at the kill).
    ``cmd(log_dir)`` is the run's command line."""
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    subprocess.run(cmd(straight), check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(cmd(broken), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (broken / "checkpoints" / f"step_{kill_at}").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before the checkpoint to kill it at"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its spawned ranks, mid-run
    proc.wait()
    assert not (broken / "checkpoints" / f"step_{last}").exists()
    killed_at = len(records(broken))
    resumed = subprocess.run([*cmd(broken), "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return records(straight), records(broken), killed_at


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    a, b, killed_at = killed_and_resumed(lambda log_dir: _cmd(log_dir, "grpo.max_num_steps=16"), tmp_path,
                                         kill_at=4, last=16)
    assert killed_at < len(a)
    picks = [r["gradalign/picked_ids"] for r in a if "gradalign/picked_ids" in r]
    assert len(picks) == 8 and picks == [r["gradalign/picked_ids"] for r in b if "gradalign/picked_ids" in r]
    assert a == b  # every metric of every step, the final evaluation included, bit for bit


def _first_selection(log_dir):
    return next(r for r in records(log_dir) if "gradalign/candidate_scores" in r)


@pytest.mark.slow
def test_tp2_training_picks_what_tp1_picks(tmp_path):
    one = ["grpo.max_num_steps=1"]
    subprocess.run(_cmd(tmp_path / "tp1", *one), check=True, capture_output=True, timeout=600)
    proc = subprocess.run(_cmd(tmp_path / "tp2", *one, "policy.megatron_cfg.tensor_model_parallel_size=2"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s1, s2 = _first_selection(tmp_path / "tp1"), _first_selection(tmp_path / "tp2")
    assert s1["gradalign/picked_ids"] == s2["gradalign/picked_ids"]
    for (a, *flags_a), (b, *flags_b) in zip(s1["gradalign/candidate_scores"], s2["gradalign/candidate_scores"]):
        assert flags_a == flags_b
        assert (a is None and b is None) or abs(a - b) <= 1e-5, (a, b)
