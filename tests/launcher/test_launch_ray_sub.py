"""NeMo RL recipes go through ray.sub the way NeMo RL's docs/cluster.md runs it, on a real local
Slurm: the host's ray.sub is checked before the queue, then submitted; its COMMAND runs under a
stand-in container runtime (container_standin/: srun records pyxis's --container-* flags and runs the
task in the container's work folder, with a recording `ray` and `python` as the image's). What the
job's python saw -- working folder, PYTHONPATH, argv -- is checked against the mounts it was given.

Through NeMo RL's own ray.sub when NEMO_RL_ROOT names a checkout (copied at test time); through a
hand-written script with the interface docs/cluster.md describes otherwise."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_launch import slurm, wait_for  # noqa: F401  (slurm: the local Slurm fixture)

ROOT = Path(__file__).parents[2]
STANDIN = Path(__file__).parent / "container_standin"
RECIPE = ROOT / "recipes" / "nemo_rl" / "grpo-qwen2.5-1.5b-1n8g-tp2-gradalign.yaml"
OVERRIDES = ["cluster.gpus_per_node=0", "logger.log_dir=a b's logs", "gradalign.refresh_every=3"]

INTERFACE_RAY_SUB = STANDIN / "ray.sub"  # ray.sub as docs/cluster.md describes it, no checkout needed
UPSTREAM_RAY_SUB = Path(os.environ.get("NEMO_RL_ROOT", "/nonexistent")) / "ray.sub"


def write_profile(tmp_path: Path, **fields) -> str:
    path = tmp_path / "cluster.yaml"
    fields = {"partition": "debug", "log_dir": str(tmp_path / "logs"), **fields}
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in fields.items()))
    return str(path)


def launch(run: Path, recipe: Path, cluster: str, *args: str, env: dict | None = None, runner=()):
    """``runner``: a command to run the launch under (setpriv dropping root's file-permission override)."""
    return subprocess.run([*runner, sys.executable, "-m", "nemo_gradalign.cli", "launch", str(recipe), "--cluster",
                           cluster, "--time", "5:00", *args], capture_output=True, text=True, timeout=120, cwd=run,
                          env=env)


def in_container(path: str, mounts: list[str]) -> tuple[str, str] | None:
    """(container dest, host source) of the mount that shows `path` inside the container."""
    for mount in mounts:
        source, dest = mount.split(":")[:2]
        if path == dest or path.startswith(dest.rstrip("/") + "/"):
            return dest, source
    return None


def submit_and_check(tmp_path: Path, ray_sub: Path) -> tuple[Path, str]:
    run, recipes, logs, record = (tmp_path / d for d in ("run", "recipes", "logs", "record"))
    image_nemo_rl = tmp_path / "image" / "opt" / "nemo-rl"  # NeMo RL inside the stand-in image
    for folder in (run, recipes, record, image_nemo_rl):
        folder.mkdir(parents=True)
    recipe = recipes / "mine.yaml"
    shutil.copy(RECIPE, recipe)
    cluster = write_profile(tmp_path, container_image="standin/nemo-rl:test", host_ray_sub=str(ray_sub.parent),
                            container_nemo_rl_root=str(image_nemo_rl), container_mounts=[f"{recipes}:/recipes"])
    env = {**os.environ, "PATH": f"{STANDIN}:{os.environ['PATH']}", "STANDIN_RECORD": str(record),
           "STANDIN_PYTHON": sys.executable}
    proc = launch(run, recipe, cluster, *OVERRIDES, env=env)
    assert proc.returncode == 0, proc.stderr
    job = re.search(r"submitted job (\d+)", proc.stdout).group(1)
    assert wait_for(job, 180) == "COMPLETED", (logs / f"slurm-{job}.out").read_text()[-3000:]

    calls = [f.read_text().split() for f in record.glob("srun.*")]
    head = next(call for call in calls if "--container-name=ray-head" in call)
    flags = dict(flag.split("=", 1) for flag in head if "=" in flag)
    mounts = flags["--container-mounts"].split(",")
    assert flags["--container-image"] == "standin/nemo-rl:test"
    assert flags["--container-workdir"] == str(run) and in_container(str(run), mounts)  # the submit folder
    assert in_container(str(logs), mounts) == (str(logs), str(logs))  # ray.sub's logs, same path both sides

    seen = json.loads((record / "python.json").read_text())
    assert seen["cwd"] == str(image_nemo_rl)  # NeMo RL's root in the image: from the image, not a mount
    # NeMo RL's output folders, relative to its working folder in the image, are pinned in the run folder
    outputs = [f"logger.log_dir={run}/a b's logs", f"checkpointing.checkpoint_dir={run}/results/grpo"]
    assert seen["argv"] == ["-m", "nemo_gradalign.integrations.nemo_rl", "--config", "/recipes/mine.yaml",
                            OVERRIDES[0], outputs[0], OVERRIDES[2], outputs[1], "cluster.num_nodes=1"]
    assert all(in_container(output.split("=", 1)[1], mounts) for output in outputs)
    dest, source = in_container("/recipes/mine.yaml", mounts)
    assert (Path(source) / "mine.yaml").read_text() == recipe.read_text()  # the host recipe, mounted
    package_root = seen["pythonpath"].split(":")[0]
    assert in_container(f"{package_root}/nemo_gradalign", mounts)  # this package, mounted
    assert seen["package"] == str(ROOT / "nemo_gradalign" / "__init__.py")
    assert (record / "ray.calls").read_text().splitlines()[0].startswith("ray ")
    assert "ray start --head" in (record / "ray.calls").read_text()
    assert (logs / f"{job}-logs" / "ray-head.log").is_file()
    return logs, job


@pytest.mark.slow
@pytest.mark.skipif(not UPSTREAM_RAY_SUB.is_file(), reason="set NEMO_RL_ROOT to a NeMo RL checkout to submit "
                    "through its ray.sub")
def test_nemo_rl_recipe_runs_through_upstream_ray_sub_on_slurm(slurm, tmp_path):
    checkout = tmp_path / "nemo-rl"
    checkout.mkdir()
    shutil.copy(UPSTREAM_RAY_SUB, checkout / "ray.sub")
    logs, job = submit_and_check(tmp_path, checkout / "ray.sub")
    assert (logs / f"{job}-logs" / "ray-driver.log").is_file()  # upstream ran COMMAND as its driver


@pytest.mark.slow
def test_nemo_rl_recipe_runs_through_ray_sub_interface_on_slurm(slurm, tmp_path):
    submit_and_check(tmp_path, INTERFACE_RAY_SUB)


def refusal(tmp_path: Path, recipe: Path, *args: str, runner=(), **fields) -> subprocess.CompletedProcess:
    """A launch that must stop before the queue: an `sbatch` first on PATH records any call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/sbatch-ran\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    fields = {"container_image": "img", "gpus_per_node": 8, **fields}
    proc = launch(tmp_path, recipe, write_profile(tmp_path, **fields), *args,
                  env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, runner=runner)
    assert proc.returncode == 2 and not (tmp_path / "sbatch-ran").exists(), proc.stderr
    return proc


def test_missing_or_foreign_host_ray_sub_is_refused_before_the_queue(tmp_path):
    proc = refusal(tmp_path, RECIPE)  # unset: ./ray.sub of the launch folder, absent here
    assert f"cluster.host_ray_sub (unset, so ./ray.sub): no file {tmp_path}/ray.sub;" in proc.stderr
    proc = refusal(tmp_path, RECIPE, host_ray_sub=str(tmp_path / "nemo-rl"))
    assert f"cluster.host_ray_sub: no file {tmp_path}/nemo-rl;" in proc.stderr
    (tmp_path / "mine.sub").write_text("#!/bin/bash\nsrun hostname\n")
    proc = refusal(tmp_path, RECIPE, host_ray_sub=str(tmp_path / "mine.sub"))
    assert f"cluster.host_ray_sub: {tmp_path}/mine.sub is not NeMo RL's ray.sub (it lacks the line " in proc.stderr


def test_unreadable_host_ray_sub_is_one_line_naming_field_and_file(tmp_path):
    ray_sub = tmp_path / "ray.sub"
    shutil.copy(INTERFACE_RAY_SUB, ray_sub)
    ray_sub.chmod(0)
    runner = []
    if os.geteuid() == 0:  # root reads a mode-000 file: run the launch without that privilege
        runner = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                  "--inh-caps=-dac_override,-dac_read_search"]
        if shutil.which("setpriv") is None or subprocess.run([*runner, "test", "-r", str(ray_sub)]).returncode != 1:
            pytest.skip("running as root, and setpriv cannot drop root's permission to read a mode-000 file")
    proc = refusal(tmp_path, RECIPE, host_ray_sub=str(ray_sub), runner=runner)
    assert proc.stderr == (f"error: cluster.host_ray_sub: cannot read {ray_sub} (Permission denied); make it "
                           "readable by this user, or name another copy of NeMo RL's ray.sub\n")


def test_overrides_reach_the_job_byte_identical_or_are_refused_naming_the_character(tmp_path):
    plain = ["logger.wandb.name=run a b's \"q\" $HOME é 日本", "logger.log_dir=runs/a b's $HOME é"]
    fields = dict(container_image="img", gpus_per_node=8, host_ray_sub=str(INTERFACE_RAY_SUB))
    proc = launch(tmp_path, RECIPE, write_profile(tmp_path, **fields), "--dry-run", *plain)
    assert proc.returncode == 0, proc.stderr
    command = next(shlex.split(line)[1].split("=", 1)[1] for line in proc.stdout.splitlines()
                   if line.startswith("export COMMAND="))
    ran = subprocess.run(["bash", "-c", 'cd() { :; }; python() { printf "%s\\0" "$@"; }; ' + command],
                         capture_output=True, text=True, check=True)  # as ray.sub runs it: bash -c "$COMMAND"
    argv = ran.stdout.split("\0")[:-1]
    assert plain[0] in argv and f"logger.log_dir={tmp_path}/runs/a b's $HOME é" in argv  # relative: in the run folder
    for char, shown, code in (("\n", "\\n", "000A"), ("\t", "\\t", "0009"), ("\u2028", "\\u2028", "2028")):
        proc = refusal(tmp_path, RECIPE, f"logger.log_dir=runs/x a{char}b", **fields)
        assert proc.stderr == (f"error: override 'logger.log_dir=runs/x a{shown}b': character 24 is {shown} (U+{code}), "
                               "which would not reach NeMo RL's job unchanged (its overrides are re-parsed on the "
                               "way); remove it\n")


def test_recipe_outside_every_container_mount_is_refused_before_the_queue(tmp_path):
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    recipe = elsewhere / "mine.yaml"
    shutil.copy(RECIPE, recipe)
    proc = refusal(tmp_path, recipe, host_ray_sub=str(INTERFACE_RAY_SUB))
    assert f"recipe {recipe} is not inside any container mount" in proc.stderr
    mounted = launch(tmp_path, recipe, write_profile(tmp_path, container_image="img", gpus_per_node=8,
                                                     host_ray_sub=str(INTERFACE_RAY_SUB),
                                                     container_mounts=[f"{elsewhere}:/mine"]), "--dry-run")
    assert mounted.returncode == 0 and "--config /mine/mine.yaml" in mounted.stdout, mounted.stderr


def test_old_nemo_rl_root_field_and_relative_container_root_are_clear_errors(tmp_path):
    proc = refusal(tmp_path, RECIPE, nemo_rl_root="/opt/nemo-rl")
    assert "nemo_rl_root is now two fields: host_ray_sub" in proc.stderr
    proc = refusal(tmp_path, RECIPE, container_nemo_rl_root="opt/nemo-rl")
    assert "container_nemo_rl_root: Value error, must be an absolute path inside the container" in proc.stderr


def test_output_folder_outside_every_container_mount_is_refused_before_the_queue(tmp_path):
    fields = dict(host_ray_sub=str(INTERFACE_RAY_SUB), container_mounts=["/lustre/ckpt:/ckpt"])
    proc = refusal(tmp_path, RECIPE, "checkpointing.checkpoint_dir=/lustre/ckpt/run1", **fields)
    assert ("checkpointing.checkpoint_dir: /lustre/ckpt/run1 is inside no container mount; what the job writes "
            "there would vanish with its container") in proc.stderr
    mounted = launch(tmp_path, RECIPE, write_profile(tmp_path, container_image="img", gpus_per_node=8, **fields),
                     "--dry-run", "checkpointing.checkpoint_dir=/ckpt/run1")
    assert mounted.returncode == 0, mounted.stderr
    assert " checkpointing.checkpoint_dir=/ckpt/run1 " in mounted.stdout


def test_an_installed_copy_is_mounted_without_the_hosts_site_packages(tmp_path):
    site, run = tmp_path / "site-packages", tmp_path / "run"  # an installed copy: no pyproject.toml beside it
    shutil.copytree(ROOT / "nemo_gradalign", site / "nemo_gradalign", ignore=shutil.ignore_patterns("__pycache__"))
    run.mkdir()
    shutil.copy(RECIPE, run / "mine.yaml")
    cluster = write_profile(tmp_path, container_image="img", gpus_per_node=8, host_ray_sub=str(INTERFACE_RAY_SUB),
                            log_dir=str(run / "logs"))
    proc = launch(run, run / "mine.yaml", cluster, "--dry-run", env={**os.environ, "PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    exported = dict(shlex.split(line)[1].split("=", 1) for line in proc.stdout.splitlines()
                    if line.startswith("export "))
    assert exported["MOUNTS"].split(",") == [f"{run}:{run}", f"{site}/nemo_gradalign:{site}/nemo_gradalign"]
    assert f" PYTHONPATH={site}${{PYTHONPATH:+:$PYTHONPATH}} python -m " in exported["COMMAND"]
