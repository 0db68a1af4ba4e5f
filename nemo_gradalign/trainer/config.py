"""The embedded recipe: NeMo RL's top-level shape (grpo, loss_fn, policy, data, checkpointing,
logger) plus the ``gradalign:`` block, validated with field-named errors."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nemo_gradalign.config import ConfigError, GradAlignConfig, format_validation_error
from nemo_gradalign.recipe_files import load_recipe
from nemo_gradalign.data import tasks
from nemo_gradalign.data.regimes import DataConfig
from nemo_gradalign.megatron.model import ModelSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GRPOConfig(_Strict):
    num_prompts_per_step: int = Field(16, gt=0, description="N: problems trained on per step")
    num_generations_per_prompt: int = Field(8, ge=2, description="G: rollouts per problem")
    max_num_steps: int = Field(160, gt=0)
    max_compute: float | None = Field(None, gt=0, description="also stop once the run's compute "
                                      "(forward token-passes, trainer/compute.py) reaches this")
    max_cost: float | None = Field(None, gt=0, description="also stop once the run's cost at scale reaches "
                                   "this (with max_compute too: once both are reached)")
    # a generated token's price at scale, in trained tokens' forward+backward (trainer/compute.py)
    generation_price: float = Field(2.0, gt=0)
    normalize_rewards: bool = True
    use_leave_one_out_baseline: bool = False
    val_period: int = Field(20, gt=0, description="evaluate every n steps (and at 0 and the end)")
    val_generations: int = Field(2, gt=0, description="samples per evaluation problem")
    seed: int = 0
    # Controls for GradAlign (issue 18): what plain GRPO trains on, and how it draws. trusted: the
    # trusted validation set as GradAlign sees it (after gradalign.validation.max_problems);
    # greso: the memory sampler with only GRESO's zero-variance skip (gradalign.memory's knobs), no G
    train_on: Literal["pool", "trusted", "pool+trusted"] = "pool"
    sampler: Literal["shuffle", "greso"] = "shuffle"
    # plain GRPO with this share of each batch drawn from the trusted set, as GradAlign's
    # gradalign.validation.train_share draws it, and no G: does alignment add anything to that mix?
    trusted_share: float = Field(0.0, ge=0.0, lt=1.0)


class LossConfig(_Strict):
    ratio_clip_min: float = Field(0.2, ge=0)
    ratio_clip_max: float = Field(0.2, ge=0)
    inner_epochs: int = Field(2, gt=0, description="optimizer steps per GRPO step (μ)")


class WarmupConfig(_Strict):
    steps: int = Field(150, ge=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)


class OptimizerConfig(_Strict):
    optimizer: Literal["adam"] = Field("adam", description="megatron's Adam is the only one built here")
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.99, ge=0, lt=1)


class MegatronConfig(_Strict):
    enabled: Literal[True] = Field(True, description="the embedded trainer always runs megatron-core")
    tensor_model_parallel_size: int = Field(1, gt=0)
    pipeline_model_parallel_size: int = Field(1, gt=0)
    optimizer: OptimizerConfig = OptimizerConfig()


class GenerationConfig(_Strict):
    temperature: float = Field(1.0, gt=0)


class PolicyConfig(_Strict):
    model: ModelSpec = ModelSpec(vocab_size=tasks.VOCAB_SIZE, max_sequence_length=tasks.MAX_SEQUENCE)
    warmup: WarmupConfig = WarmupConfig()
    generation: GenerationConfig = GenerationConfig()
    megatron_cfg: MegatronConfig = MegatronConfig()
    max_rollouts_per_microbatch: int | None = Field(None, gt=0)


class CheckpointingConfig(_Strict):
    enabled: bool = True
    checkpoint_dir: str = "runs/embedded/checkpoints"
    save_period: int = Field(10, gt=0)
    keep_top_k: int = Field(3, gt=0)
    metric_name: str = "val:accuracy"


class LoggerConfig(_Strict):
    log_dir: str = "runs/embedded"


class EmbeddedRecipe(_Strict):
    grpo: GRPOConfig = GRPOConfig()
    loss_fn: LossConfig = LossConfig()
    policy: PolicyConfig = PolicyConfig()
    data: DataConfig = DataConfig()
    checkpointing: CheckpointingConfig = CheckpointingConfig()
    logger: LoggerConfig = LoggerConfig()
    gradalign: GradAlignConfig = GradAlignConfig()

    @model_validator(mode="after")
    def _consistent(self):
        """Cross-block rules that would otherwise fail deep inside a rank (or be ignored)."""
        model, d = self.policy.model, self.data
        if model.vocab_size < tasks.MIN_VOCAB:
            raise ValueError(f"policy.model.vocab_size={model.vocab_size} is too small: the task's tokens "
                             f"need at least {tasks.MIN_VOCAB}")
        longest = 2 * max(d.all_lengths) + 2
        if model.max_sequence_length < longest:
            raise ValueError(f"policy.model.max_sequence_length={model.max_sequence_length} is shorter than "
                             f"the longest problem (data lengths up to {max(d.all_lengths)}: {longest} tokens)")
        if self.policy.warmup.steps > 0 and d.warmup_size == 0:
            raise ValueError(f"data.warmup_size=0 but policy.warmup.steps={self.policy.warmup.steps}: the "
                             "warm-up needs problems (or set policy.warmup.steps=0)")
        metric = self.checkpointing.metric_name
        if metric != "val:accuracy" and not metric.startswith("val:accuracy/"):
            raise ValueError(f"checkpointing.metric_name={metric!r} is not an evaluation metric (val:accuracy, "
                             "val:accuracy/<op> or val:accuracy/len<n>); keep_top_k would rank nothing")
        if self.grpo.sampler == "greso" and self.gradalign.enabled:
            raise ValueError("grpo.sampler='greso' is plain GRPO with a zero-variance skip and no validation "
                             "gradient: set gradalign.enabled=false (or grpo.sampler=shuffle)")
        if self.grpo.sampler == "greso" and self.gradalign.memory.zero_skip_step == 0:
            raise ValueError("grpo.sampler='greso' with gradalign.memory.zero_skip_step=0 never skips: set it "
                             "above 0 (e.g. 0.5)")
        if self.grpo.trusted_share and (self.gradalign.enabled or self.grpo.sampler != "shuffle"
                                        or self.grpo.train_on != "pool"):
            raise ValueError(f"grpo.trusted_share={self.grpo.trusted_share} is plain GRPO's control (gradalign.enabled"
                             "=false, grpo.sampler=shuffle, grpo.train_on=pool); GradAlign's own trusted share is "
                             "gradalign.validation.train_share")
        if self.gradalign.enabled and not self.gradalign.steer:
            raise ValueError(f"gradalign.steer=false is NeMo RL's setting for the trusted mix without G; here it is "
                             f"gradalign.enabled=false with grpo.trusted_share={self.gradalign.validation.train_share}")
        if self.gradalign.validation.dataset and d.validation_source:
            raise ValueError("gradalign.validation.dataset and data.validation_source both name the "
                             "validation set; set one")
        return self


def parse_recipe(raw: dict) -> EmbeddedRecipe:
    try:
        return EmbeddedRecipe.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "")) from None


def load_embedded_recipe(path, overrides: list[str] | None = None) -> EmbeddedRecipe:
    return parse_recipe(load_recipe(path, overrides))
