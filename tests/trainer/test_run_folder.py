"""A run folder belongs to one run: real `nemo-gradalign train` subprocesses on one log folder."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

RECIPE = str(Path(__file__).parents[2] / "recipes" / "embedded" / "noisy.yaml")
SMALL = ["grpo.num_prompts_per_step=4", "grpo.val_period=2", "data.pool_size=64", "data.validation_size=16",
         "data.eval_size=8", "data.warmup_size=200", "policy.warmup.steps=30", "gradalign.chunk_size=16",
         "gradalign.steps_per_round=2", "checkpointing.save_period=2", "gradalign.rollouts_per_problem=4",
         "grpo.num_generations_per_prompt=4", "gradalign.validation.rollouts_per_problem=8"]
TIMING = {"seconds", "gradalign/seconds", "compute/total_seconds"}


def train(log_dir, *extra, wait=True):
    cmd = [sys.executable, "-m", "nemo_gradalign.cli", "train", "--config", RECIPE, *SMALL,
           f"logger.log_dir={log_dir}", *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def snapshot(folder: Path) -> dict:
    """Every file under the folder with its content hash: 'nothing changed' made checkable."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def records(log_dir) -> list[dict]:
    lines = (Path(log_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def steps(log_dir) -> list[str]:
    return sorted(p.name for p in (Path(log_dir) / "checkpoints").iterdir() if p.name.startswith("step_"))


@pytest.mark.slow
def test_one_run_per_folder_lock_refusals_and_overwrite(tmp_path):
    run = tmp_path / "run"
    first = train(run, "grpo.max_num_steps=4", wait=False)
    lock = run / ".lock"
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text().strip()):
        assert first.poll() is None and time.time() < deadline, "the first run never took its lock"
        time.sleep(0.05)
    second = train(run, "grpo.max_num_steps=4", "--overwrite")  # even --overwrite waits its turn
    assert second.returncode == 2 and f"in use by another training process (pid {first.pid})" in second.stderr
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    kept = records(run)
    assert [r["step"] for r in kept if r["kind"] == "train"] == [1, 2, 3, 4]  # each step once
    assert steps(run) == ["step_2", "step_4"]

    before = snapshot(run)
    reuse = train(run, "grpo.max_num_steps=2")  # a new run in the old run's folder
    assert reuse.returncode == 2, reuse.stderr
    assert f"logger.log_dir {run} holds another run" in reuse.stderr and "step_2, step_4" in reuse.stderr
    assert "--resume" in reuse.stderr and "--overwrite" in reuse.stderr

    changed = train(run, "grpo.max_num_steps=4", "grpo.seed=3", "data.pool_size=80", "--resume")
    assert changed.returncode == 2
    for line in ("data.pool_size: 64 in the checkpoint, 80 now", "grpo.seed: 0 in the checkpoint, 3 now"):
        assert line in changed.stderr, changed.stderr
    tp2 = train(run, "grpo.max_num_steps=4", "policy.megatron_cfg.tensor_model_parallel_size=2", "--resume")
    assert tp2.returncode == 2 and "policy.megatron_cfg.tensor_model_parallel_size: 1 in the checkpoint, 2 now" \
        in tp2.stderr and "size mismatch" not in tp2.stderr
    dp2 = train(run, "grpo.max_num_steps=4", "--ranks", "2", "--resume")
    assert dp2.returncode == 2 and "was written by 1 ranks, this run has 2" in dp2.stderr
    assert snapshot(run) == before  # every refusal left the folder as it was

    over = train(run, "grpo.max_num_steps=2", "--overwrite")
    assert over.returncode == 0, over.stderr[-3000:]
    assert steps(run) == ["step_2"]  # the old step_4 is gone: it cannot become "latest"
    assert [r["step"] for r in records(run) if r["kind"] == "train"] == [1, 2]
    assert records(run) == kept[:len(records(run))]  # same recipe, same seed: the same first steps


def test_resume_with_nothing_to_resume_says_so_and_writes_nothing(tmp_path):
    empty = train(tmp_path / "new", "grpo.max_num_steps=2", "--resume")
    assert empty.returncode == 2 and "--resume: nothing to resume" in empty.stderr
    assert not (tmp_path / "new").exists()
    started = tmp_path / "started"  # an attempt killed before its first checkpoint
    started.mkdir()
    (started / "metrics.jsonl").write_text('{"step": 0, "kind": "eval", "val:accuracy": 0.5}\n')
    again = train(started, "grpo.max_num_steps=2", "--resume")
    assert again.returncode == 2 and "holds no complete checkpoint" in again.stderr
    assert "metrics.jsonl (1 records)" in again.stderr
    assert (started / "metrics.jsonl").read_text() == '{"step": 0, "kind": "eval", "val:accuracy": 0.5}\n'


@pytest.mark.slow
def test_resume_past_debris_a_torn_metrics_line_and_broken_checkpoints(tmp_path):
    straight = tmp_path / "straight"
    assert train(straight, "grpo.max_num_steps=4").returncode == 0
    run = tmp_path / "run"
    assert train(run, "grpo.max_num_steps=4").returncode == 0
    ck = run / "checkpoints"
    (ck / "step_4" / "training_info.json").unlink()  # a checkpoint whose info never landed
    (ck / "step_9").mkdir()                          # a stray empty step folder
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 5, "kind": "tra')  # a write cut by a crash
    resumed = train(run, "grpo.max_num_steps=4", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "dropping a torn last line" in resumed.stderr
    assert records(run) == records(straight)  # resumed from step_2: steps 3-4 again, bit for bit
    assert json.loads((ck / "step_4" / "training_info.json").read_text())["step"] == 4
