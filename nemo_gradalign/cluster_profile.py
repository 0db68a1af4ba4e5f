"""A cluster profile (launcher/clusters/<name>.yaml): where and how ``nemo-gradalign launch``
submits, validated before anything is rendered."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nemo_gradalign.config import ConfigError, format_validation_error
from nemo_gradalign.recipe_files import read_yaml_mapping

CLUSTERS = Path(__file__).resolve().parents[1] / "launcher" / "clusters"


class ClusterProfile(BaseModel):
    """launcher/clusters/<name>.yaml"""

    model_config = ConfigDict(extra="forbid")

    account: str | None = None
    partition: str | None = None
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int | None = Field(None, gt=0)
    container_image: str | None = None
    container_mounts: list[str] = []
    host_ray_sub: str | None = None  # NeMo RL's ray.sub on the submitting host (or its checkout); None: ./ray.sub
    container_nemo_rl_root: str = "/opt/nemo-rl"  # NeMo RL inside the image; the job's working folder
    log_dir: str = "runs/slurm"

    @model_validator(mode="before")
    @classmethod
    def _split_field(cls, data):
        if isinstance(data, dict) and "nemo_rl_root" in data:
            raise ValueError("nemo_rl_root is now two fields: host_ray_sub (NeMo RL's ray.sub on this host, or "
                             "its checkout) and container_nemo_rl_root (NeMo RL inside the image)")
        return data

    @field_validator("container_nemo_rl_root")
    @classmethod
    def _inside_image(cls, value):
        if not value.startswith("/"):
            raise ValueError("must be an absolute path inside the container image")
        return value

    @field_validator("container_image")
    @classmethod
    def _image(cls, value):
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise ValueError(f"container image must be one word without spaces, got {value!r}")
        return value


def load_profile(path: str) -> ClusterProfile:
    file = Path(path)
    if not file.is_file():
        known = ", ".join(sorted(p.stem for p in CLUSTERS.glob("*.yaml")))
        raise ConfigError(f"--cluster: no cluster profile at {path} (shipped: {known})")
    try:
        return ClusterProfile.model_validate(read_yaml_mapping(file, "cluster profile"))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"cluster({file.name})")) from None
