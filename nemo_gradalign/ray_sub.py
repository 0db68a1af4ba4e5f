"""NeMo RL's ray.sub seen from both sides of `sbatch`: the file on the submitting host that sbatch
reads before any job exists, and the paths its COMMAND needs inside the container (each mounted,
or part of the image). Both are checked before the queue: neither fails visibly until the job runs."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from nemo_gradalign.config import ConfigError

# Lines every ray.sub has carried since NeMo RL's first commit (all 50 versions, March 2025 to
# August 2026): the three variables it is driven by, and the Ray head it starts.
RAY_SUB_MARKERS = ("CONTAINER=$CONTAINER", "MOUNTS=$MOUNTS", "COMMAND=${COMMAND:-}", "ray start --head")


def host_ray_sub(setting: str | None) -> Path:
    """The profile's host_ray_sub (the script, or the NeMo RL checkout holding it); unset, the
    ./ray.sub of the launch folder, as NeMo RL's docs submit from the checkout."""
    field = "cluster.host_ray_sub" if setting else "cluster.host_ray_sub (unset, so ./ray.sub)"
    path = Path(setting or "ray.sub").expanduser().absolute()
    if path.is_dir():
        path = path / "ray.sub"
    if not path.is_file():
        raise ConfigError(f"{field}: no file {path}; name NeMo RL's ray.sub on this host (or the NeMo RL "
                          "checkout holding it), or launch from that checkout")
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise ConfigError(f"{field}: cannot read {path} ({err.strerror or err}); make it readable by this user, "
                          "or name another copy of NeMo RL's ray.sub") from None
    missing = [marker for marker in RAY_SUB_MARKERS if marker not in text]
    if missing:
        raise ConfigError(f"{field}: {path} is not NeMo RL's ray.sub (it lacks the line {missing[0]!r})")
    return path


def _mount_pairs(mounts: list[str]):
    """pyxis's --container-mounts entries, SRC[:DST[:FLAGS]], as (real host source, container dest)."""
    for mount in mounts:
        source, dest = (mount.split(":") + [""])[:2]
        yield Path(os.path.realpath(source)), dest or source


def container_path(host_path: Path, mounts: list[str]) -> str | None:
    """Where host_path appears inside the container (the deepest mount holding it), or None."""
    real = Path(os.path.realpath(host_path))
    held = [(source, dest) for source, dest in _mount_pairs(mounts) if real == source or source in real.parents]
    if not held:
        return None
    source, dest = max(held, key=lambda pair: len(pair[0].parts))
    return str(PurePosixPath(dest, real.relative_to(source)))


def container_view(recipe: Path, profile_mounts: list[str], log_dir: Path) -> tuple[list[str], str, str]:
    """The job's MOUNTS, and where the recipe and this package's import root appear in the container:
    the profile's mounts, then at their host paths the run folder (ray.sub's --container-workdir is
    the submit folder), this package and ray.sub's log folder (it writes there from both sides)."""
    package_root = Path(__file__).resolve().parents[1]
    mounts = list(profile_mounts)
    for what, folder in (("run folder", Path.cwd()), ("package", _package_folder(package_root)),
                         ("log_dir", log_dir)):
        if "," in str(folder) or ":" in str(folder):
            raise ConfigError(f"{what} {folder}: a ',' or ':' in the path cannot be passed to --container-mounts")
        if container_path(folder, mounts) != str(folder):
            mounts.append(f"{folder}:{folder}")
    config = container_path(recipe, mounts)
    if config is None:
        raise ConfigError(f"recipe {recipe.resolve()} is not inside any container mount (the run folder "
                          f"{Path.cwd()}, {_package_folder(package_root)} or cluster.container_mounts): the "
                          "job could not read it")
    return mounts, config, str(PurePosixPath(container_path(package_root / "nemo_gradalign", mounts)).parent)


def _package_folder(package_root: Path) -> Path:
    """A source checkout is mounted whole (its recipes come along); an installed copy only as its
    package folder, so the host's site-packages never shadow the container's."""
    if (package_root / "pyproject.toml").is_file():
        return package_root
    return package_root / "nemo_gradalign"


# NeMo RL's GRPO output folders and their defaults (examples/configs/grpo_math_1B.yaml), relative
# to its working folder.
OUTPUT_FOLDERS = {"checkpointing.checkpoint_dir": "results/grpo", "logger.log_dir": "logs"}


def pin_outputs(merged: dict, overrides: list[str], mounts: list[str]) -> list[str]:
    """NeMo RL writes checkpoints and logs relative to its working folder, which for this job is its
    root in the image: gone with the container. Relative or unset, they are pinned in the run folder
    (where NeMo RL's own launch, run from the submit folder, puts them); absolute, they must lie in a
    mount. Returns the overrides that say so."""
    for key, default in OUTPUT_FOLDERS.items():
        value = merged
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str) and value.startswith("/"):
            dests = [dest.rstrip("/") for _, dest in _mount_pairs(mounts)]
            if not any(value == dest or value.startswith(dest + "/") for dest in dests):
                raise ConfigError(f"{key}: {value} is inside no container mount; what the job writes there "
                                  "would vanish with its container")
        elif value is None or (isinstance(value, str) and "${" not in value):
            pinned = f"{key}={Path.cwd() / (value or default)}"
            given = [o.lstrip("+").split("=", 1)[0] == key for o in overrides]
            overrides = [o[:len(o) - len(o.lstrip("+"))] + pinned if mine else o
                         for o, mine in zip(overrides, given)]
            overrides += [] if any(given) else [pinned]
    return overrides
