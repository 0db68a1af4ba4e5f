"""`launch` refuses before `sbatch` what would only fail after the queue: train's layout checks
for embedded recipes, NeMo RL recipe values of the wrong type, a cluster profile whose log folder
cannot be written, a data file that is not there. On a real local Slurm: the queue stays as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_launch import NEMO_RL, NOISY, ROOT, TINY, launch, profile, queue_size, slurm  # noqa: F401 (fixture)


def _cases(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    ok = profile(tmp_path)
    gpus = str(tmp_path / "gpus.yaml")
    Path(gpus).write_text(f"partition: debug\ncontainer_image: img\ngpus_per_node: 8\nlog_dir: {tmp_path / 'logs'}\n")
    unwritable = str(tmp_path / "unwritable.yaml")
    Path(unwritable).write_text(f"partition: debug\nlog_dir: {a_file}/logs\n")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"op": "sort", "digits": "0123"}\n{"op": "sorté", "digits": "456"}\n'.encode("latin-1"))
    return [
        ([NOISY, "--cluster", ok, *TINY, "policy.megatron_cfg.tensor_model_parallel_size=3"],
         "policy.model.num_attention_heads=4 and policy.model.vocab_size=32 must be divisible by TP=3"),
        ([NOISY, "--cluster", unwritable, *TINY],
         f"cluster profile {unwritable}: log_dir {a_file}/logs: cannot be a folder, {a_file} is a file"),
        ([NEMO_RL, "--cluster", unwritable.replace("unwritable", "gpus"), "grpo.max_num_steps=2.5"],
         "grpo.max_num_steps: Input should be a valid integer, got a number with a fractional part (got 2.5)"),
        ([NEMO_RL, "--cluster", gpus, "policy.megatron_cfg.tensor_model_parallel_size=two"],
         "policy.megatron_cfg.tensor_model_parallel_size: Input should be a valid integer"),
        ([NOISY, "--cluster", ok, *TINY, f"++data.pool_source={tmp_path}/nope.jsonl"],
         f"data.pool_source: cannot read problems from '{tmp_path}/nope.jsonl': no such file"),
        ([NOISY, "--cluster", ok, *TINY, f"++data.pool_source={latin1}"],
         f"data.pool_source: {latin1} line 2: not UTF-8 text (byte 0xe9 at byte offset 45: invalid continuation byte)"),
    ]


@pytest.mark.slow
def test_late_failures_are_refused_before_the_queue(slurm, tmp_path):
    before = queue_size()
    for args, message in _cases(tmp_path):
        proc = launch(*args, "--time", "10:00", cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, \
            (message, proc.stderr[-2000:])
    assert queue_size() == before
    assert not (tmp_path / "logs").exists()  # nothing was submitted, so no log folder either


def test_dry_runs_refuse_the_same(tmp_path):
    for args, message in _cases(tmp_path):
        proc = launch(*args, "--dry-run", cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, \
            (message, proc.stderr[-2000:])


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("NEMO_RL_ROOT"), reason="set NEMO_RL_ROOT to a NeMo RL checkout")
def test_nemo_rl_recipes_are_loaded_by_upstream_where_it_is_importable(tmp_path):
    """A value in the recipe's parent: only upstream's loader (which follows ``defaults:``) sees it."""
    root = Path(os.environ["NEMO_RL_ROOT"])
    parent = tmp_path / "parent.yaml"
    parent.write_text(f"defaults: {root / 'examples' / 'configs' / 'grpo_math_1B.yaml'}\ngrpo:\n  max_num_steps: 1.5\n")
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("defaults: parent.yaml\ncluster: {num_nodes: 1, gpus_per_node: 8}\n")
    gpus = tmp_path / "gpus.yaml"
    gpus.write_text(f"partition: debug\ncontainer_image: img\ngpus_per_node: 8\nlog_dir: {tmp_path / 'logs'}\n"
                    f"host_ray_sub: {root}\n")  # the checkout's own ray.sub
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(root)])}
    refused = subprocess.run([sys.executable, "-m", "nemo_gradalign.cli", "launch", str(recipe), "--cluster", str(gpus),
                              "--dry-run"], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "grpo.max_num_steps: Input should be a valid integer, got a number with a fractional part (got 1.5)" \
        in refused.stderr
    fixed = subprocess.run([sys.executable, "-m", "nemo_gradalign.cli", "launch", str(recipe), "--cluster", str(gpus),
                            "--dry-run", "grpo.max_num_steps=3"], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path, env=env)
    assert fixed.returncode == 0, fixed.stderr[-2000:]


@pytest.mark.slow
def test_resume_on_changed_data_is_refused_before_the_queue_unless_allowed(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(f'{{"op": "sort", "digits": "{i:03d}"}}\n' for i in range(64)))
    small = ["grpo.max_num_steps=2", "grpo.num_prompts_per_step=4", "grpo.val_period=2", "data.pool_size=64",
             "data.validation_size=16", "data.eval_size=8", "data.warmup_size=200", "policy.warmup.steps=30",
             "gradalign.chunk_size=16", "gradalign.steps_per_round=2", "checkpointing.save_period=2",
             "gradalign.rollouts_per_problem=4", "grpo.num_generations_per_prompt=4",
             "gradalign.validation.rollouts_per_problem=8", f"++data.pool_source={pool}",
             f"logger.log_dir={tmp_path / 'run'}"]
    trained = subprocess.run([sys.executable, "-m", "nemo_gradalign.cli", "train", "--config", NOISY, *small],
                             capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    pool.write_text("".join(f'{{"op": "sort", "digits": "{i:04d}"}}\n' for i in range(64)))
    args = [NOISY, "--cluster", profile(tmp_path), "--dry-run", "--resume", *small, "grpo.max_num_steps=4"]
    refused = launch(*args, cwd=tmp_path)
    assert refused.returncode == 2 and f"data.pool_source={pool}: its content changed" in refused.stderr
    allowed = launch(*args, "--allow-data-change", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "  --allow-data-change\n" in allowed.stdout  # forwarded to every rank's train command
