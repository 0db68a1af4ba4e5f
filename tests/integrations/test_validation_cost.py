"""What G costs in NeMo RL (issue 29): on upstream's own recipe (grpo_math_1B_megatron.yaml, loaded
with upstream's loader where a checkout is found, else a recipe of the same shape) and a validation
set of its real size (50,000 synthetic prompts), the flag says what it would generate for G per step:
nothing with the flag alone (the unevaluated validation rows train and steer); without a trusted share
it warns when G passes a tenth of the step's generation, and collates only the prompts G uses."""

from __future__ import annotations

import types

import pytest

from test_preflight import UPSTREAM_RECIPE, recipe

from nemo_gradalign.integrations.nemo_rl.config import read_gradalign
from nemo_gradalign.integrations.nemo_rl.entry import _validation_batch
from nemo_gradalign.integrations.nemo_rl import trusted_set
from nemo_gradalign.integrations.nemo_rl.sampler_state import trusted_draw
from nemo_gradalign.integrations.nemo_rl.validation_cost import g_cost_line, trusted_cost_line

REAL_SIZE = 50_000  # 5% of OpenMathInstruct-2's train_1M: the recipe's validation data


class Prompts:
    """A validation dataset of the real size that counts the prompts read from it."""

    def __init__(self, n: int):
        self.n, self.read = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.read += 1
        return {"idx": i}


def test_the_flag_alone_on_upstreams_recipe_generates_nothing_for_g():
    """The flag alone: half of each step's 32 prompts are validation rows NeMo RL never evaluates
    (all but the first 256 of 50,000), the memory picks the other 16: 512 responses a step, as plain
    GRPO, and none generated for G."""
    pytest.importorskip("nemo_rl.data.datasets.processed_dataset", reason="NeMo RL not importable")
    from test_trusted_set import _processed, _validation

    cfg = recipe("gradalign.enabled=true")
    cfg["grpo"].setdefault("max_val_samples", 256)
    cfg["grpo"].setdefault("val_batch_size", 256)
    flag = read_gradalign(cfg)
    pool = _processed([{"q": f"p{i}", "a": "0"} for i in range(1000)])
    same, raw, tail = trusted_set.resolve(cfg, flag, pool, _validation(REAL_SIZE))
    assert same is flag and len(tail) == REAL_SIZE - 256 and raw[0]["q"] == "v256"
    draw = trusted_draw(cfg, flag, raw)
    assert draw.per_step == 16 and draw.keys.size == REAL_SIZE - 256
    assert trusted_cost_line(cfg, flag, draw) == (
        "gradalign: the trusted set trains and steers: 16 of each step's 32 prompts come from the validation rows "
        "NeMo RL never evaluates (49,744 problems), the memory picks the other 16; G from their groups every 1 "
        "step(s): 0 responses generated for G, 0% of the step's generation")


def test_without_a_trusted_share_the_real_validation_size_warns_and_collates_only_gs_prompts():
    cfg = recipe("gradalign.enabled=true", "gradalign.validation.train_share=0")
    assert cfg["grpo"].get("max_val_samples") == 256 or not UPSTREAM_RECIPE.is_file()  # upstream's own value
    cfg["grpo"].setdefault("max_val_samples", 256)  # the same-shape recipe lacks it
    line = g_cost_line(cfg, read_gradalign(cfg), REAL_SIZE)
    # 256 prompts x 16 rollouts every step = 4,096 responses against the step's 32 x 16 = 512
    assert line == ("gradalign: warning: G from the first 256 of 50,000 validation prompts (grpo.max_val_samples) "
                    "x 16 rollouts every 1 step(s): 4,096 responses a step, 800% of the step's 512 (32 prompts x 16), "
                    "more than a tenth of its generation; lower gradalign.validation.max_problems or raise "
                    "gradalign.refresh_every")
    prompts = Prompts(REAL_SIZE)
    batch = _validation_batch(types.SimpleNamespace(dataset=prompts), cfg, read_gradalign(cfg), list)
    assert len(batch) == 256 and prompts.read == 256  # not 50,000 prompts collated into one batch


def test_a_small_trusted_set_refreshed_rarely_is_within_a_tenth():
    cfg = recipe("gradalign.enabled=true", "gradalign.validation.max_problems=8", "gradalign.refresh_every=4",
                 "gradalign.validation.train_share=0")
    line = g_cost_line(cfg, read_gradalign(cfg), REAL_SIZE)
    assert line == ("gradalign: G from the first 8 of 50,000 validation prompts (gradalign.validation.max_problems) "
                    "x 16 rollouts every 4 step(s): 32 responses a step, 6% of the step's 512 (32 prompts x 16)")
