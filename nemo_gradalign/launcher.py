"""`nemo-gradalign launch`: render and submit Slurm jobs, checking everything before the queue.

Written here rather than through NeMo-Run or submitit: NeMo RL's own way is `sbatch ray.sub` with
CONTAINER/MOUNTS/COMMAND in the environment, which neither renders; submitit submits pickled Python
functions, not a command line per rank; NeMo-Run brings ~440 MB (Ray, torchx, fiddle) and a
leptonai pin for what is one sbatch script here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from nemo_gradalign.cluster_profile import ClusterProfile, load_profile
from nemo_gradalign.config import ConfigError
from nemo_gradalign.recipe_files import load_recipe, read_yaml_mapping
from nemo_gradalign.paths import check_writable_folder, make_folder
from nemo_gradalign import override_characters
from nemo_gradalign.ray_sub import container_view, host_ray_sub, pin_outputs

_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")


def check_time(value: str) -> str:
    if not _TIME.match(value):
        raise ConfigError(f"--time: {value!r} is not a Slurm time limit (minutes, MM:SS, HH:MM:SS "
                          "or D-HH:MM:SS)")
    return value


def _sbatch_options(profile: ClusterProfile, nodes: int, time: str, job_name: str, log: Path,
                    ntasks_per_node: int | None) -> list[str]:
    opts = [f"--job-name={job_name}", f"--nodes={nodes}", f"--time={time}", f"--output={log}/slurm-%j.out"]
    if ntasks_per_node:
        opts.append(f"--ntasks-per-node={ntasks_per_node}")
    if profile.account:
        opts.append(f"--account={profile.account}")
    if profile.partition:
        opts.append(f"--partition={profile.partition}")
    if profile.gpus_per_node:
        opts.append(f"--gres=gpu:{profile.gpus_per_node}")
    if profile.cpus_per_task:
        opts.append(f"--cpus-per-task={profile.cpus_per_task}")
    return opts


def embedded_script(recipe: str, overrides: list[str], profile: ClusterProfile, nodes: int | None, time: str,
                    resume: bool = False, overwrite: bool = False, allow_data_change: bool = False) -> str:
    """One srun task per rank; torch.distributed set up from Slurm's variables. The train command is
    a quoted bash array passed to each task as arguments: no shell ever re-parses an override."""
    from nemo_gradalign.jobs.train import layout_for
    from nemo_gradalign.trainer.config import parse_recipe
    from nemo_gradalign.trainer.run_folder import RunFolder
    from nemo_gradalign.trainer.sets import preflight

    override_characters.check_embedded(overrides)
    cfg = parse_recipe(load_recipe(recipe, overrides))  # bad overrides never reach the queue
    m = cfg.policy.megatron_cfg
    ranks = m.tensor_model_parallel_size * m.pipeline_model_parallel_size
    layout_for(cfg, ranks)  # train's own layout checks: a model TP/PP cannot split fails here
    nodes = nodes or 1
    if ranks % nodes:
        raise ConfigError(f"--nodes={nodes} does not divide the recipe's TP×PP = {ranks} ranks")
    if profile.gpus_per_node and ranks // nodes > profile.gpus_per_node:
        raise ConfigError(f"{ranks // nodes} ranks per node (TP×PP = {ranks} over --nodes={nodes}) exceed the "
                          f"cluster profile's gpus_per_node={profile.gpus_per_node}")
    data = preflight(cfg)  # data and schedule sizes
    RunFolder.of(cfg).check(cfg.model_dump(mode="json"), ranks, resume, overwrite, data,  # relative to this cwd
                            allow_data_change)
    log = Path(profile.log_dir).resolve()
    flags = [*(["--resume"] if resume else []), *(["--overwrite"] if overwrite else []),
             *(["--allow-data-change"] if allow_data_change else [])]
    train = [sys.executable, "-m", "nemo_gradalign.cli", "train", "--config", str(Path(recipe).resolve()),
             *flags, *overrides]
    container = ""
    if profile.container_image:
        mounts = ",".join([*profile.container_mounts, f"{Path.cwd()}:{Path.cwd()}"])
        container = f"--container-image={shlex.quote(profile.container_image)} --container-mounts={shlex.quote(mounts)} "
    lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in _sbatch_options(
        profile, nodes, time, f"gradalign-{Path(recipe).stem}", log, ranks // nodes)), "",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
        f"export PYTHONPATH={shlex.quote(str(Path(__file__).resolve().parents[1]))}${{PYTHONPATH:+:$PYTHONPATH}}",
        *(["export OMP_NUM_THREADS=1"] if not profile.gpus_per_node else []),
        f"cd {shlex.quote(str(Path.cwd()))}",
        "TRAIN=(", *(f"  {override_characters.bash_word(arg)}" for arg in train), ")",
        f"srun --kill-on-bad-exit=1 {container}bash -c 'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS "
        "LOCAL_RANK=$SLURM_LOCALID; exec \"$@\"' rank \"${TRAIN[@]}\"", ""]
    return "\n".join(lines)


def _reconcile_cluster(merged: dict, overrides: list[str], profile: ClusterProfile, nodes: int | None) -> tuple[int, list[str]]:
    """Nodes and GPUs per node agree between --nodes, the profile and the recipe's ``cluster:``;
    returns the node count and the overrides that tell NeMo RL the same."""
    block = merged.get("cluster") or {}
    if not isinstance(block, dict):
        raise ConfigError(f"cluster: expected a mapping (num_nodes, gpus_per_node), got {block!r}")
    wanted_nodes, wanted_gpus = block.get("num_nodes"), block.get("gpus_per_node")
    if nodes is not None and wanted_nodes is not None and nodes != wanted_nodes:
        raise ConfigError(f"--nodes {nodes} but the recipe's cluster.num_nodes={wanted_nodes}; pass --nodes "
                          f"{wanted_nodes}, or override cluster.num_nodes={nodes}")
    if wanted_gpus is not None and wanted_gpus != profile.gpus_per_node:
        raise ConfigError(f"the recipe's cluster.gpus_per_node={wanted_gpus} but the cluster profile has "
                          f"gpus_per_node={profile.gpus_per_node}; override cluster.gpus_per_node or use "
                          "another profile")
    nodes = nodes or wanted_nodes or 1
    megatron = (merged.get("policy") or {}).get("megatron_cfg") or {}
    model_parallel = int(megatron.get("tensor_model_parallel_size") or 1) * int(
        megatron.get("pipeline_model_parallel_size") or 1)
    gpus = nodes * profile.gpus_per_node
    if profile.gpus_per_node and gpus % model_parallel:
        raise ConfigError(f"{nodes} node(s) x {profile.gpus_per_node} GPUs = {gpus} cannot hold TP×PP = "
                          f"{model_parallel} (policy.megatron_cfg)")
    given = {o.lstrip("+").split("=", 1)[0] for o in overrides}
    extra = [f"cluster.{k}={v}" for k, v in (("num_nodes", nodes), ("gpus_per_node", profile.gpus_per_node))
             if f"cluster.{k}" not in given]
    return nodes, extra


def nemo_rl_submission(recipe: str, overrides: list[str], profile: ClusterProfile, nodes: int | None,
                       time: str) -> tuple[list[str], dict[str, str]]:
    """NeMo RL's way: `sbatch ... ray.sub` with CONTAINER, MOUNTS, COMMAND in the environment."""
    from nemo_gradalign.integrations.nemo_rl.config import check_supported, read_gradalign
    from nemo_gradalign.integrations.nemo_rl.recipe_types import check_recipe_types

    override_characters.check_nemo_rl(overrides)
    raw = read_yaml_mapping(recipe)
    from omegaconf import OmegaConf

    merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(raw), OmegaConf.from_dotlist(
        [o.lstrip("+") for o in overrides])), resolve=False)
    check_supported(merged, read_gradalign(merged))  # the gradalign block, before the queue
    check_recipe_types(recipe, overrides, merged)  # upstream's keys, typed
    if not profile.container_image:
        raise ConfigError("cluster.container_image: NeMo RL runs in its container; the profile names none")
    nodes, cluster_overrides = _reconcile_cluster(merged, overrides, profile, nodes)
    ray_sub = host_ray_sub(profile.host_ray_sub)
    log = Path(profile.log_dir).resolve()
    mounts, config, package = container_view(Path(recipe), profile.container_mounts, log)
    entry = ["python", "-m", "nemo_gradalign.integrations.nemo_rl", "--config", config,
             *pin_outputs(merged, overrides, mounts), *cluster_overrides]
    command = (f"cd {shlex.quote(profile.container_nemo_rl_root)} && "
               f"PYTHONPATH={shlex.quote(package)}${{PYTHONPATH:+:$PYTHONPATH}} {shlex.join(entry)}")
    env = {
        "CONTAINER": profile.container_image,
        "MOUNTS": ",".join(mounts),
        "COMMAND": command,
        "GPUS_PER_NODE": str(profile.gpus_per_node),
        "BASE_LOG_DIR": str(log),
    }
    cmd = ["sbatch", *_sbatch_options(profile, nodes, time, f"gradalign-{Path(recipe).stem}", log, None),
           str(ray_sub)]
    return cmd, env


def launch(recipe: str, cluster: str, nodes: int | None, time: str, dry_run: bool, overrides: list[str],
           resume: bool = False, overwrite: bool = False, allow_data_change: bool = False) -> str | None:
    if nodes is not None and nodes <= 0:
        raise ConfigError(f"--nodes: must be positive, got {nodes}")
    check_time(time)
    if not Path(recipe).is_file():
        raise ConfigError(f"recipe not found: {recipe}")
    profile = load_profile(cluster)
    check_writable_folder(profile.log_dir, f"cluster profile {cluster}: log_dir")
    if _is_nemo_rl(recipe):
        if resume or overwrite or allow_data_change:
            raise ConfigError("--resume/--overwrite are for embedded recipes (as is --allow-data-change): NeMo RL "
                              "resumes from its checkpointing.checkpoint_dir by itself")
        cmd, env = nemo_rl_submission(recipe, overrides, profile, nodes, time)
        if dry_run:
            print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()))
            print(shlex.join(cmd))
            return None
        make_folder(profile.log_dir, f"cluster profile {cluster}: log_dir")
        out = subprocess.run([cmd[0], "--parsable", *cmd[1:]], env={**os.environ, **env},
                             capture_output=True, text=True)
    else:
        script = embedded_script(recipe, overrides, profile, nodes, time, resume, overwrite, allow_data_change)
        if dry_run:
            print(script)
            return None
        make_folder(profile.log_dir, f"cluster profile {cluster}: log_dir")
        out = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True)
    if out.returncode:
        raise ConfigError(f"sbatch refused the job: {out.stderr.strip()}")
    job = out.stdout.strip().split(";")[0]
    print(f"submitted job {job}; logs: {Path(profile.log_dir).resolve()}/slurm-{job}.out\n"
          f"follow: squeue -j {job}   tail -f {Path(profile.log_dir).resolve()}/slurm-{job}.out\n"
          f"cancel: scancel {job}")
    return job


def _is_nemo_rl(recipe: str) -> bool:
    """NeMo RL recipes name a cluster block or inherit the container's NeMo RL examples."""
    raw = read_yaml_mapping(recipe)
    return "cluster" in raw or str(raw.get("defaults", "")).startswith("/opt/nemo-rl")
