"""What `launch` renders and refuses, without a queue: overrides reach ranks byte for byte, --nodes
and GPUs per node agree with the recipe's cluster block, and run folders are checked first."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
NOISY = str(ROOT / "recipes" / "embedded" / "noisy.yaml")
TWO_NODES = str(ROOT / "recipes" / "nemo_rl" / "grpo-llama3.1-8b-2n8g-tp4pp2-gradalign.yaml")
RAY_SUB = str(Path(__file__).parent / "container_standin" / "ray.sub")  # only read in a dry run
SMALL = ["grpo.max_num_steps=2", "data.pool_size=128", "data.validation_size=16", "data.eval_size=16",
         "data.warmup_size=300", "gradalign.chunk_size=32", "grpo.num_prompts_per_step=8"]


def launch(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "nemo_gradalign.cli", "launch", *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def profile(tmp_path, **fields) -> str:
    path = tmp_path / "cluster.yaml"
    fields = {"partition": "debug", "log_dir": str(tmp_path / "logs"), **fields}
    path.write_text("".join(f"{k}: {v}\n" for k, v in fields.items()))
    return str(path)


def test_overrides_reach_the_rank_command_exactly(tmp_path):
    tricky = ["logger.log_dir=runs/a b/seed${grpo.seed}", "++gradalign.validation.max_problems=4"]
    proc = launch(tmp_path, NOISY, "--cluster", profile(tmp_path), "--dry-run", *SMALL, *tricky)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    array = script[script.index("TRAIN=("):script.index("\n)\n") + 3]
    argv = subprocess.run(["bash", "-c", array + 'printf "%s\\0" "${TRAIN[@]}"'], capture_output=True,
                          text=True, check=True).stdout.split("\0")[:-1]
    assert argv[-len(tricky):] == tricky and argv[1:4] == ["-m", "nemo_gradalign.cli", "train"]
    assert re.search(r"^srun --kill-on-bad-exit=1 bash -c '.*exec \"\$@\"' rank \"\$\{TRAIN\[@\]\}\"$", script, re.M)


def test_control_characters_reach_the_rank_command_quoted_or_are_refused_naming_them(tmp_path):
    quoted = "logger.log_dir='runs/a b\r\nc\td\x1b é $HOME \"q\"'"  # Hydra takes them inside quotes
    proc = subprocess.run([sys.executable, "-m", "nemo_gradalign.cli", "launch", NOISY, "--cluster", profile(tmp_path),
                           "--dry-run", *SMALL, quoted], capture_output=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    script = proc.stdout.decode()  # read as bytes: text mode turns \r\n into \n
    assert "\r" not in script  # sbatch refuses a script holding \r\n
    array = script[script.index("TRAIN=("):script.index("\n)\n") + 3]
    argv = subprocess.run(["bash", "-c", array + 'printf "%s\\0" "${TRAIN[@]}"'], capture_output=True,
                          check=True).stdout.decode().split("\0")[:-1]
    assert argv[-1] == quoted
    refused = launch(tmp_path, NOISY, "--cluster", profile(tmp_path), "--dry-run", *SMALL, "logger.log_dir=runs/x a\nb")
    assert refused.returncode == 2 and refused.stderr == (
        "error: override 'logger.log_dir=runs/x a\\nb': character 24 is \\n (U+000A), which Hydra's override "
        "syntax takes only inside a quoted value (key='...'); quote the value or remove it\n")


@pytest.mark.slow
def test_two_node_recipe_gets_two_nodes_and_nemo_rl_is_told(tmp_path):
    gpus = profile(tmp_path, container_image="img", host_ray_sub=RAY_SUB, gpus_per_node=8)
    proc = launch(tmp_path, TWO_NODES, "--cluster", gpus, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    sbatch = next(line for line in proc.stdout.splitlines() if line.startswith("sbatch "))
    assert "--nodes=2" in sbatch and "--gres=gpu:8" in sbatch
    assert "cluster.num_nodes=2 cluster.gpus_per_node=8'" in proc.stdout
    one = launch(tmp_path, TWO_NODES, "--cluster", gpus, "--dry-run", "--nodes", "1")
    assert one.returncode == 2 and "--nodes 1 but the recipe's cluster.num_nodes=2" in one.stderr
    four = launch(tmp_path, TWO_NODES, "--cluster", profile(tmp_path, container_image="img", host_ray_sub=RAY_SUB, gpus_per_node=4),
                  "--dry-run")
    assert four.returncode == 2 and "cluster.gpus_per_node=8 but the cluster profile has gpus_per_node=4" in four.stderr


@pytest.mark.slow
def test_nodes_are_forwarded_when_the_recipe_leaves_them_to_its_parent(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("defaults: /opt/nemo-rl/examples/configs/grpo_math_1B_megatron.yaml\n"
                      "policy: {megatron_cfg: {enabled: true, tensor_model_parallel_size: 4, sequence_parallel: false}}\n"
                      "gradalign: {enabled: true, schedule: step, selection_ratio: 4}\n"
                      "grpo: {use_dynamic_sampling: true, batch_multiplier: 4}\n")
    gpus = profile(tmp_path, container_image="img", host_ray_sub=RAY_SUB, gpus_per_node=2)
    bad = launch(tmp_path, str(recipe), "--cluster", gpus, "--dry-run")
    assert bad.returncode == 2 and "1 node(s) x 2 GPUs = 2 cannot hold TP×PP = 4" in bad.stderr
    proc = launch(tmp_path, str(recipe), "--cluster", gpus, "--dry-run", "--nodes", "3", "cluster.gpus_per_node=2")
    assert "cannot hold TP×PP = 4" in proc.stderr
    proc = launch(tmp_path, str(recipe), "--cluster", gpus, "--dry-run", "--nodes", "4")
    assert proc.returncode == 0, proc.stderr
    assert "--nodes=4" in proc.stdout and "cluster.num_nodes=4 cluster.gpus_per_node=2'" in proc.stdout


def test_run_folder_is_checked_before_the_queue(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\n')
    args = [NOISY, "--cluster", profile(tmp_path), "--dry-run", *SMALL, f"logger.log_dir={run}"]
    taken = launch(tmp_path, *args)
    assert taken.returncode == 2 and f"logger.log_dir {run} holds another run" in taken.stderr
    over = launch(tmp_path, *args, "--overwrite")
    assert over.returncode == 0 and "  --overwrite\n" in over.stdout  # the job replaces it, not the launcher
    assert (run / "metrics.jsonl").exists()
