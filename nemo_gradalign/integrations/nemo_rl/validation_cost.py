"""What the validation gradient G costs in NeMo RL, said before ``setup()`` starts anything.

G is rebuilt every ``gradalign.refresh_every``-th step from the trusted validation prompts, each
generated with the recipe's ``grpo.num_generations_per_prompt`` rollouts in a call of its own
(validation_rollouts.py). Which prompts: the first ``gradalign.validation.max_problems`` of the
recipe's validation data; unset, the first ``grpo.max_val_samples`` (upstream's own cap on the
validation prompts it evaluates), never a whole split by default: on ``grpo_math_1B.yaml`` the
validation data is 5% of OpenMathInstruct-2's ``train_1M``, about 50,000 prompts, which would
generate 800,000 responses for G every step against the step's 512.

The flag's line states G's share of a step's generation; above a tenth it is a warning with the
numbers and the two settings that lower it.
"""

from __future__ import annotations

from nemo_gradalign.config import GradAlignConfig
from nemo_gradalign.integrations.nemo_rl.config import lookup
from nemo_gradalign.integrations.nemo_rl.config_access import loader_prompts

WARN_ABOVE = 0.1  # of a step's generated responses


def validation_problems(master_config, cfg: GradAlignConfig, available: int) -> int:
    """How many validation prompts build G (the first ones of the validation data)."""
    cap = cfg.validation.max_problems or lookup(master_config, "grpo.max_val_samples") or available
    return min(available, int(cap))


def g_cost_line(master_config, cfg: GradAlignConfig, available: int) -> str:
    n = validation_problems(master_config, cfg, available)
    k = int(lookup(master_config, "grpo.num_generations_per_prompt"))
    prompts = int(lookup(master_config, "grpo.num_prompts_per_step"))
    per_step = n * k / cfg.refresh_every
    share = per_step / (prompts * k)
    which = ("gradalign.validation.max_problems" if cfg.validation.max_problems else
             "grpo.max_val_samples" if lookup(master_config, "grpo.max_val_samples") else "all")
    line = (f"G from the first {n:,} of {available:,} validation prompts ({which}) x {k} rollouts every "
            f"{cfg.refresh_every} step(s): {per_step:,.0f} responses a step, {share:.0%} of the step's "
            f"{prompts * k:,} ({prompts} prompts x {k})")
    if share > WARN_ABOVE:
        return (f"gradalign: warning: {line}, more than a tenth of its generation; lower "
                f"gradalign.validation.max_problems or raise gradalign.refresh_every")
    return f"gradalign: {line}"


def trusted_cost_line(master_config, cfg: GradAlignConfig, draw) -> str:
    """The flag's line when the trusted set trains and steers: G costs no generation of its own."""
    prompts = int(lookup(master_config, "grpo.num_prompts_per_step"))
    source = ("gradalign.validation.dataset" if cfg.validation.dataset is not None else
              "the validation rows NeMo RL never evaluates")
    if not cfg.steer:
        drawn = loader_prompts(master_config)
        batch = f"each step's {prompts}" if drawn == prompts else f"each drawn batch's {drawn}"
        line = (f"gradalign: the trusted mix (gradalign.steer=false): {draw.per_step} of {batch} prompts "
                f"come from {source} ({draw.keys.size:,} problems), the other {drawn - draw.per_step} from the pool "
                "in seeded shuffled passes; no G, nothing scored")
        if drawn != prompts:
            line += ("; DAPO's dynamic sampling then keeps the groups with reward variance from both, drawing "
                     f"batches until {prompts} prompts are kept")
        if lookup(master_config, "grpo.async_grpo.enabled", False):
            age = lookup(master_config, "grpo.async_grpo.max_trajectory_age_steps", None)
            line += (f"; async GRPO: the trajectory collector draws the batches ahead of training (trained up to "
                     f"{age} steps after they were drawn), trusted and pool prompts interleaved so a gap-filled "
                     "batch keeps the share; its saved loader state resumes the draw")
        return line
    return (f"gradalign: the trusted set trains and steers: {draw.per_step} of each step's {prompts} prompts come "
            f"from {source} ({draw.keys.size:,} problems), the memory picks the other "
            f"{prompts - draw.per_step}; G from their groups every {cfg.refresh_every} step(s): 0 responses "
            "generated for G, 0% of the step's generation")
