"""The ``gradalign:`` block users add to a NeMo RL-shaped recipe, validated with named fields.

Every error names the field by its full path (``gradalign.validation.rollouts_per_problem``)
and the value that was given, so a typo in a 500-line recipe is found at once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A recipe value is wrong; the message names each offending field and its value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AdvantageConfig(_Strict):
    """How rewards become advantages when a problem is scored. Unset (None), each follows the
    trainer's own setting (``grpo.use_leave_one_out_baseline``, ``grpo.normalize_rewards``), so
    the scored gradient is the trained one; set, it overrides them for scoring only."""

    baseline: Literal["mean", "leave_one_out"] | None = None
    normalize_std: bool | None = None

    def resolve(self, use_leave_one_out_baseline: bool, normalize_rewards: bool) -> tuple[str, bool]:
        """(baseline, normalize_std) for scoring, given the trainer's settings."""
        trainer = "leave_one_out" if use_leave_one_out_baseline else "mean"
        return (self.baseline or trainer,
                normalize_rewards if self.normalize_std is None else self.normalize_std)


class ValidationSetConfig(_Strict):
    """The small trusted set whose gradient every candidate is compared with."""

    dataset: str | None = None  # HF hub name, local JSONL/parquet, or a shipped task family
    split: str = "train"
    max_problems: int | None = Field(None, gt=0)
    rollouts_per_problem: int = Field(16, ge=2)
    # the trusted set trains and steers (memory schedule): this share of each step's batch is drawn
    # from it, trained on, and its groups' gradient is G; no rollouts of their own for G. 0: G from
    # rollouts_per_problem rollouts of every trusted problem, generated for G alone and not trained on
    train_share: float = Field(0.0, ge=0.0, lt=1.0)
    # with a train_share (embedded trainer): G for the next step is copied off this step's update, the
    # trusted groups' share of its gradient (megatron/update_reference.py): no pass of its own
    g_from_update: bool = False


class MemorySamplerConfig(BaseModel):
    """Knobs of the memory sampler (selection/memory_policy.py says what each does). In a recipe
    it is ``gradalign.memory``, read by ``gradalign.schedule: memory``; its seed defaults to
    ``gradalign.seed`` there."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)
    seed: int = Field(0, ge=0)
    # Defaults: the best of a sweep on the demo's tuning seeds 0-2 (benchmarks/memory_sweep.py,
    # noisy, pool 512): every visit's cosine kept, zero gradients not skipped (they are mostly
    # solved clean problems), mean <= 0 skipped, a sharp preference. Noisy picks after the first
    # pass 0.26 (0.47 with the first defaults: decay 0.5, zero-skip 0.5, z 1.645, T 1), same area.
    # share of a batch given to unseen problems (1: every problem is seen once before any choice)
    explore_share: float = Field(1.0, gt=0.0, le=1.0)
    # skip probability added per consecutive zero-gradient visit (0: never skipped for that), and the
    # most it reaches (< 1: skipped problems come back); a confidently misaligned one gets skip_cap
    zero_skip_step: float = Field(0.0, ge=0.0, le=1.0)
    skip_cap: float = Field(0.9, ge=0.0, lt=1.0)
    # misaligned: at least min_scored_visits cosines and mean + confidence_z · se <= 0
    confidence_z: float = Field(0.0, ge=0.0)
    min_scored_visits: int = Field(2, ge=1)
    prior_weight: float = Field(2.0, gt=0.0)  # pseudo-visits of pooled variance in a problem's spread
    temperature: float = Field(0.3, gt=0.0)  # of the preference, in standard deviations of it
    optimism: float = Field(0.0, ge=0.0)  # standard errors added to the mean cosine when preferring
    generation_decay: float = Field(1.0, ge=0.0, le=1.0)  # a cosine's weight per G rebuild since
    # a zero-gradient visit counts as an observed alignment of 0 (selection/memory.py): solved problems
    # stop being favourites; false: it records no cosine (only the zero streak grows)
    zero_gradient_scores_zero: bool = False

    def knobs(self):
        from nemo_gradalign.selection.memory_policy import PolicyKnobs

        return PolicyKnobs(self.explore_share, self.zero_skip_step, self.skip_cap, self.confidence_z,
                           self.min_scored_visits, self.prior_weight, self.temperature, self.optimism)


class GradAlignConfig(_Strict):
    enabled: bool = False
    method: Literal["gradalign", "simacc", "dot", "learnalign", "accgreedy", "accfilter", "random", "dapo"] = "gradalign"
    # step: score q·N drawn problems, train the top N; round: the paper's chunks; memory: pick N
    # from the score memory before rollout, score them in the training pass (gradalign.memory)
    schedule: Literal["step", "round", "memory"] = "step"
    selection_ratio: int = Field(4, ge=1, description="q: score q·N problems, keep N")
    chunk_size: int = Field(64, gt=0, description="M: candidates scored per round (round schedule)")
    steps_per_round: int = Field(4, gt=0, description="T: training steps per round (round schedule)")
    rollouts_per_problem: int = Field(8, ge=2, description="k_r: rollouts per candidate when scoring")
    uninformative: Literal["exclude", "zero"] = "exclude"
    refresh_every: int = Field(1, gt=0, description="rebuild the validation gradient every n steps")
    # keep only scores > z·σ̂ (σ̂: RMS of the negative scores, the noise scale); fewer than N
    # significant candidates train on fewer problems. null: fill the quota (the paper's top-N)
    significance: float | None = Field(None, ge=0.0)
    # adam: G divided by √v̂ + ε from the optimizer's state (the official code's optional
    # preconditioner; only in the embedded trainer)
    precondition: Literal["none", "adam"] = "none"
    acc_low: float = Field(0.2, ge=0.0, le=1.0)
    acc_high: float = Field(0.8, ge=0.0, le=1.0)
    advantage: AdvantageConfig = AdvantageConfig()
    # None: the trainer's own (NeMo RL: loss_fn.token_level_loss; the embedded trainer: token_mean)
    aggregation: Literal["token_mean", "sequence_mean"] | None = None
    # G = Σ g_v over validation problems (sum), or weighted as the trainer's loss over the set as
    # one batch weighs them (trainer: by tokens under token_mean, by rollouts under sequence_mean)
    reference_weighting: Literal["sum", "trainer"] = "sum"
    reference_dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    max_rollouts_per_microbatch: int | None = Field(None, gt=0)
    # rows per microbatch when many problems share one scoring pass (exact per-problem partials,
    # megatron/per_problem.py); null: one problem per pass. Models it cannot read fall back.
    pack_rows: int | None = Field(128, gt=0)
    # memory schedule inside NeMo RL: auto reads each trained group's alignment from the worker's
    # own train() where that is exact (else a separate scoring pass, the reason logged once); off:
    # always the separate pass
    in_pass: Literal["auto", "off"] = "auto"
    # where a training microbatch splits a problem (fewer rows than its rollouts), its squared norm
    # is estimated from seeded k×k sign projections of each weight shard's gradient (the dot stays
    # exact; megatron/projections.py bounds the error); null: such splits are refused / fall back
    in_pass_projection: int | None = Field(32, gt=0, strict=True)
    seed: int = 42
    # false (NeMo RL, with a trusted share): the trusted set trains, nothing steers: the pool's share is
    # drawn in seeded shuffled passes, no G, nothing scored (the embedded grpo.trusted_share control)
    steer: bool = True
    validation: ValidationSetConfig = ValidationSetConfig()
    memory: MemorySamplerConfig = MemorySamplerConfig()

    @model_validator(mode="before")
    @classmethod
    def _memory_seed_follows_seed(cls, data):
        """``gradalign.memory.seed`` unset: the sampler draws with ``gradalign.seed``."""
        if isinstance(data, dict) and isinstance(data.get("memory", {}), dict) and "seed" not in data.get("memory", {}):
            seed = data.get("seed", cls.model_fields["seed"].default)
            data = {**data, "memory": {**data.get("memory", {}), "seed": seed}}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.schedule == "memory" and self.method not in ("gradalign", "simacc"):
            raise ValueError(f"schedule='memory' remembers alignment with the validation gradient: method must "
                             f"be 'gradalign' or 'simacc' (got {self.method!r})")
        if self.validation.train_share and self.schedule != "memory":
            raise ValueError(f"validation.train_share={self.validation.train_share} trains the trusted set inside the "
                             f"memory schedule's batch: set schedule=memory (got {self.schedule!r})")
        if self.validation.g_from_update and not self.validation.train_share:
            raise ValueError("validation.g_from_update=true copies G off the trusted groups the update trains: "
                             "it needs validation.train_share > 0")
        if not self.steer and not (self.schedule == "memory" and self.validation.train_share):
            raise ValueError("steer=false trains a trusted share and steers nothing: it needs schedule=memory and "
                             f"validation.train_share > 0 (got {self.schedule!r}, {self.validation.train_share})")
        if self.acc_low > self.acc_high:
            raise ValueError(f"acc_low={self.acc_low} must not exceed acc_high={self.acc_high}")
        if self.schedule == "round" and self.chunk_size < self.selection_ratio:
            raise ValueError(
                f"chunk_size={self.chunk_size} must be at least selection_ratio="
                f"{self.selection_ratio} (a round keeps chunk_size // selection_ratio problems)"
            )
        return self

    @property
    def keep_per_round(self) -> int:
        return self.chunk_size // self.selection_ratio


def format_validation_error(err: ValidationError, root: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join([*([root] if root else []), *(str(p) for p in e["loc"])]) or "(top level)"
        given = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        lines.append(f"{path}: {e['msg']}{given}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_block(model: type[BaseModel], block: Any, root: str):
    """Validate a mapping (plain dict or OmegaConf; None: the defaults) into ``model``; errors name
    ``root.field`` and the value given."""
    if block is None:
        return model()
    if hasattr(block, "_metadata"):  # an OmegaConf node
        from omegaconf import OmegaConf

        block = OmegaConf.to_container(block, resolve=True)
    if not isinstance(block, dict):
        raise ConfigError(f"{root}: expected a mapping, got {type(block).__name__} {block!r}")
    try:
        return model.model_validate(block)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, root)) from None


def parse_gradalign(block: Any, root: str = "gradalign") -> GradAlignConfig:
    """Validate a ``gradalign:`` mapping into a GradAlignConfig."""
    return parse_block(GradAlignConfig, block, root)
