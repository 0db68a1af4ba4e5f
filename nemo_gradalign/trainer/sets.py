"""The run's data and the schedule over it, built once before any rank is spawned.

Loading every set (schema-checked) and building the schedule up front means a bad file, an empty
set or a pool too small for the schedule fails with the numbers before warm-up, not inside a rank.
"""

from __future__ import annotations

from nemo_gradalign.config import ConfigError
from nemo_gradalign.data import regimes
from nemo_gradalign.selection.schedules import RoundSchedule, StepSchedule
from nemo_gradalign.trainer.config import EmbeddedRecipe


def build_sets(recipe: EmbeddedRecipe) -> regimes.TaskSets:
    """The regime's sets; ``gradalign.validation.dataset`` / ``max_problems`` shape the trusted set."""
    from nemo_gradalign.data.store import load_problems

    sets = regimes.build(recipe.data)
    v = recipe.gradalign.validation
    if v.dataset:
        try:
            sets.validation = load_problems(v.dataset, v.split)
        except ValueError as err:
            raise ConfigError(f"gradalign.validation.dataset: {err}") from None
    if v.max_problems is not None:
        sets.validation = sets.validation[: v.max_problems]
    return sets


def build_schedule(recipe: EmbeddedRecipe, pool_size: int):
    ga, n = recipe.gradalign, recipe.grpo.num_prompts_per_step
    try:
        if ga.enabled and ga.schedule == "round":
            return RoundSchedule(pool_size, ga.chunk_size, ga.keep_per_round, ga.steps_per_round, n, ga.seed)
        draw = n * ga.selection_ratio if ga.enabled else n
        return StepSchedule(pool_size, draw, n, ga.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def preflight(recipe: EmbeddedRecipe) -> dict:
    """Everything about the data that can fail, without a model: run before spawning ranks.
    Returns the sets' content fingerprints, which a resume compares with its checkpoint's."""
    from nemo_gradalign.trainer.data_fingerprint import fingerprints

    sets = build_sets(recipe)
    build_schedule(recipe, len(sets.pool))
    return fingerprints(recipe, sets)
