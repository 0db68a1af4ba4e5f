"""The run's data and the schedule over it, built once before any rank is spawned.

Loading every set (schema-checked) and building the schedule up front means a bad file, an empty
set or a pool too small for the schedule fails with the numbers before warm-up, not inside a rank.
"""

from __future__ import annotations

import json
from typing import Callable

from nemo_gradalign.config import ConfigError
from nemo_gradalign.data import regimes, tasks
from nemo_gradalign.megatron.step import microbatch_rows
from nemo_gradalign.selection import problem_keys
from nemo_gradalign.selection.schedules import MemorySchedule, RoundSchedule, StepSchedule
from nemo_gradalign.selection.trusted_draw import TrustedDraw
from nemo_gradalign.trainer.config import EmbeddedRecipe


def build_sets(recipe: EmbeddedRecipe) -> regimes.TaskSets:
    """The regime's sets; ``gradalign.validation.dataset`` / ``max_problems`` shape the trusted set,
    ``grpo.train_on`` what the training pool holds."""
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
    train_on = recipe.grpo.train_on  # controls: the trusted set alone, or added to the pool
    if train_on != "pool":
        sets.pool = [*(sets.pool if train_on == "pool+trusted" else []), *sets.validation]
    return sets


def build_schedule(recipe: EmbeddedRecipe, pool: list[tasks.Problem], trusted: list[tasks.Problem] = ()):
    """``trusted``: the trusted set, drawn from when ``gradalign.validation.train_share`` > 0."""
    ga, n, pool_size = recipe.gradalign, recipe.grpo.num_prompts_per_step, len(pool)
    try:
        memory = ga.enabled and ga.schedule == "memory"
        if memory:
            check_in_pass_readable(recipe)
        if memory or recipe.grpo.sampler == "greso":  # greso: plain GRPO through the memory sampler, no G
            draw = trusted_draw(recipe, trusted) if memory else None
            return MemorySchedule(pool_size, n, ga.memory, keys=problem_keys.keys_of(map(identity, pool)),
                                  trusted=draw)
        if ga.enabled and ga.schedule == "round":
            return RoundSchedule(pool_size, ga.chunk_size, ga.keep_per_round, ga.steps_per_round, n, ga.seed,
                                 keys=problem_keys.keys_of(map(identity, pool)))
        if not ga.enabled and recipe.grpo.trusted_share:  # the control: a trusted share, no G
            share = TrustedDraw.for_share(problem_keys.keys_of(map(identity, trusted)),
                                                  recipe.grpo.trusted_share, n, ga.memory.seed)
            return StepSchedule(pool_size, n - share.per_step, n - share.per_step, ga.seed,
                                share)
        draw = n * ga.selection_ratio if ga.enabled else n
        return StepSchedule(pool_size, draw, n, ga.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def trusted_draw(recipe: EmbeddedRecipe, trusted: list[tasks.Problem]) -> TrustedDraw | None:
    """The trusted share of each batch: round(train_share · N) problems, at least one, leaving one for the pool."""
    share = recipe.gradalign.validation.train_share
    if not share:
        return None
    return TrustedDraw.for_share(problem_keys.keys_of(map(identity, trusted)), share,
                                 recipe.grpo.num_prompts_per_step, recipe.gradalign.memory.seed)


def identity(problem: tasks.Problem) -> bytes:
    """What makes a problem itself, for the score memory: what it asks, the key it is checked
    against and its tags; not ``problem_id``, which defaults to the row number."""
    return json.dumps([problem.op, list(problem.digits), problem.key, sorted(problem.tags.items())],
                      separators=(",", ":"), default=str).encode()


def check_in_pass_readable(recipe: EmbeddedRecipe) -> None:
    """The memory schedule reads alignment from the training pass (megatron/in_pass.py); refuse,
    with the field, what that pass cannot attribute to single problems, before any rank starts."""
    model, k = recipe.policy.model, recipe.grpo.num_generations_per_prompt
    for field, value, why in (("tie_embeddings", model.tie_embeddings, "one parameter fed by two modules"),
                              ("sequence_parallel", model.sequence_parallel, "layer-norm grads partial over TP"),
                              ("num_experts", model.num_experts, "tokens permuted across experts")):
        if value:
            raise ValueError(f"policy.model.{field}={value!r}: gradalign.schedule=memory reads alignment from the "
                             f"training pass, which cannot attribute it to problems ({why})")
    cap = recipe.policy.max_rollouts_per_microbatch
    rows = recipe.grpo.num_prompts_per_step * k
    per = microbatch_rows(rows, cap)
    if per % k and recipe.gradalign.in_pass_projection is None:
        fits = next(microbatch_rows(rows, m) for m in range(cap, 0, -1) if microbatch_rows(rows, m) % k == 0)
        raise ValueError(f"policy.max_rollouts_per_microbatch={cap} evens the step's {rows} rollouts out to "
                         f"microbatches of {per}, which split problems of grpo.num_generations_per_prompt={k} "
                         f"rollouts; with gradalign.in_pass_projection=null the memory schedule reads alignment from "
                         f"the training pass only for whole problems per microbatch: use e.g. {fits}, unset it, or "
                         "set a projection dimension")


def preflight(recipe: EmbeddedRecipe) -> dict:
    """Everything about the data that can fail, without a model: run before spawning ranks.
    Returns the sets' content fingerprints, which a resume compares with its checkpoint's."""
    return checked_data(recipe)[0]


def checked_data(recipe: EmbeddedRecipe) -> tuple[dict, Callable[[], object]]:
    """``preflight``'s fingerprints, and a maker of fresh schedules over the pool (a resume loads
    the checkpoint's schedule state into one before any rank starts: checkpoint_files.py)."""
    from nemo_gradalign.trainer.data_fingerprint import fingerprints

    sets = build_sets(recipe)
    build_schedule(recipe, sets.pool, sets.validation)
    return fingerprints(recipe, sets), lambda: build_schedule(recipe, sets.pool, sets.validation)
