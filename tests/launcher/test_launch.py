"""`nemo-gradalign launch` on a real local Slurm (started by the test, stopped by pid), and bad
input that never reaches the queue."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
NOISY = str(ROOT / "recipes" / "embedded" / "noisy.yaml")
NEMO_RL = str(ROOT / "recipes" / "nemo_rl" / "grpo-qwen2.5-1.5b-1n8g-tp2-gradalign.yaml")
RAY_SUB = str(Path(__file__).parent / "container_standin" / "ray.sub")  # only read in a dry run
TINY = ["policy.megatron_cfg.tensor_model_parallel_size=2", "grpo.max_num_steps=2", "grpo.val_period=2",
        "data.pool_size=128", "data.validation_size=16", "data.eval_size=16", "data.warmup_size=300",
        "gradalign.chunk_size=32", "grpo.num_prompts_per_step=8", "gradalign.steps_per_round=2",
        "checkpointing.save_period=2"]


def launch(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nemo_gradalign.cli", "launch", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("a local Slurm needs root (to install and start slurmctld, slurmd, munge)")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("no Slurm and no apt-get to install it")
    start = subprocess.run([str(ROOT / "launcher" / "local_slurm.sh"), "start"], capture_output=True, text=True)
    if start.returncode:
        pytest.skip(f"could not start a local Slurm: {start.stderr.strip()}")
    yield
    subprocess.run([str(ROOT / "launcher" / "local_slurm.sh"), "stop"], capture_output=True)


def profile(tmp_path, **fields) -> str:
    path = tmp_path / "cluster.yaml"
    lines = [f"{k}: {v}" for k, v in {"partition": "debug", "log_dir": str(tmp_path / "logs"), **fields}.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def wait_for(job: str, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
        state = re.search(r"JobState=(\w+)", out)
        if state and state.group(1) not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            return state.group(1)
        time.sleep(0.5)
    raise TimeoutError(f"job {job} still running after {timeout} s")


def queue_size() -> int:
    return len(subprocess.run(["squeue", "-h", "-t", "all"], capture_output=True, text=True).stdout.splitlines())


def submit(tmp_path, *args) -> str:
    proc = launch(NOISY, "--cluster", profile(tmp_path), "--time", "10:00", *TINY, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job = re.search(r"submitted job (\d+)", proc.stdout).group(1)
    assert f"scancel {job}" in proc.stdout and f"slurm-{job}.out" in proc.stdout
    assert wait_for(job) == "COMPLETED", (tmp_path / "logs" / f"slurm-{job}.out").read_text()[-3000:]
    return job


@pytest.mark.slow
def test_embedded_recipe_runs_on_slurm_with_two_tp_ranks_then_resumes(slurm, tmp_path):
    # a space and an interpolation reach every rank exactly as typed (no shell re-parse on the node)
    log_dir = f"logger.log_dir={tmp_path}/a b/seed${{grpo.seed}}"
    job = submit(tmp_path, log_dir)
    info = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    assert "NumTasks=2" in info and "ExitCode=0:0" in info
    run = tmp_path / "a b" / "seed0"
    records = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2] and (run / "checkpoints" / "step_2").is_dir()
    submit(tmp_path, log_dir, "grpo.max_num_steps=4", "--resume")  # launch can resume
    resumed = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed if r["kind"] == "train"] == [1, 2, 3, 4]
    assert resumed[:len(records)] == records and (run / "checkpoints" / "step_4").is_dir()


@pytest.mark.slow
def test_nemo_rl_dry_run_renders_ray_sub_and_its_options_pass_test_only(slurm, tmp_path):
    before = queue_size()
    proc = launch(NEMO_RL, "--cluster", profile(tmp_path, container_image="nvcr.io/nvidia/nemo-rl:v0.6.0",
                                                 gpus_per_node=8, host_ray_sub=RAY_SUB),
                  "--dry-run", "--time", "30:00", "gradalign.refresh_every=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for var in ("CONTAINER=nvcr.io/nvidia/nemo-rl:v0.6.0", "MOUNTS=", "GPUS_PER_NODE=8", "BASE_LOG_DIR="):
        assert f"export {var}" in out
    assert "nemo_gradalign.integrations.nemo_rl --config" in out and "gradalign.refresh_every=3" in out
    sbatch = next(line for line in out.splitlines() if line.startswith("sbatch "))
    assert sbatch.endswith(f" {RAY_SUB}") and "--time=30:00" in sbatch and "cd /opt/nemo-rl && " in out
    assert queue_size() == before  # a dry run submits nothing
    options = [o for o in sbatch.split()[1:-1] if not o.startswith("--gres")]  # this Slurm has no GPUs
    test = subprocess.run(["sbatch", "--test-only", *options, "--wrap", "true"], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr


BAD = [
    (["/nope/recipe.yaml", "--cluster", "{profile}"], "recipe not found"),
    ([NOISY, "--cluster", "/nope/cluster.yaml"], "--cluster: no cluster profile"),
    ([NOISY, "--cluster", "{profile}", "--nodes", "0"], "--nodes: must be positive, got 0"),
    ([NOISY, "--cluster", "{spaced}"], "container image must be one word without spaces"),
    ([NOISY, "--cluster", "{profile}", "grpo.max_num_steps=-1"], "grpo.max_num_steps"),
    ([NOISY, "--cluster", "{profile}", "--time", "1h"], "--time: '1h' is not a Slurm time limit"),
    ([NOISY, "--cluster", "{not_yaml}"], "cluster profile {not_yaml} is not valid YAML"),
    ([NOISY, "--cluster", "{profile}", "data.lengths=[3]"], "have only 1000"),
    ([NOISY, "--cluster", "{profile}", "--resume", "logger.log_dir=never"], "--resume: nothing to resume"),
    ([NEMO_RL, "--cluster", "{profile}", "--resume"], "--resume/--overwrite are for embedded recipes"),
    ([NOISY, "--cluster", "{profile}", "logger.log_dir=${{nope}}"], "Interpolation key 'nope' not found"),
]


def _bad_runs(tmp_path):
    spaced = tmp_path / "spaced.yaml"
    spaced.write_text("partition: debug\ncontainer_image: 'nvcr.io/nvidia/nemo rl:v1'\n")
    not_yaml = tmp_path / "not_yaml.yaml"
    not_yaml.write_text("partition: [debug\n")
    for args, message in BAD:
        names = dict(profile=profile(tmp_path), spaced=spaced, not_yaml=not_yaml)
        yield launch(*[a.format(**names) for a in args], cwd=tmp_path), message.format(**names)


def test_bad_input_is_a_clear_error(tmp_path):
    for proc, message in _bad_runs(tmp_path):
        assert proc.returncode == 2 and message in proc.stderr, (message, proc.stderr)


@pytest.mark.slow
def test_bad_input_never_reaches_the_queue(slurm, tmp_path):
    before = queue_size()
    for proc, _ in _bad_runs(tmp_path):
        assert proc.returncode == 2
    assert queue_size() == before


def test_embedded_dry_run_renders_pyxis_flags_and_slurm_rank_variables(tmp_path):
    proc = launch(NOISY, "--cluster", profile(tmp_path, container_image="nvcr.io/nvidia/nemo-rl:v0.6.0",
                                               gpus_per_node=8), "--nodes", "1", "--dry-run", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --gres=gpu:8" in script
    assert "srun --kill-on-bad-exit=1 --container-image=nvcr.io/nvidia/nemo-rl:v0.6.0 --container-mounts=" in script
    assert "RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID" in script
    assert "MASTER_ADDR=$(scontrol show hostnames" in script and "OMP_NUM_THREADS" not in script
    assert not (tmp_path / "logs").exists()  # a dry run writes nothing
