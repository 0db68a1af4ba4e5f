"""`nemo-gradalign train --config <recipe> [overrides] [--resume]`: the embedded GRPO loop."""

from __future__ import annotations

from nemo_gradalign.megatron import parallel
from nemo_gradalign.trainer.config import EmbeddedRecipe


def layout_for(recipe: EmbeddedRecipe, world_size: int) -> parallel.Layout:
    """The layout, or a ValueError naming the fields: run by ``train`` and ``launch`` before any rank."""
    from nemo_gradalign.megatron.model import check_split

    m = recipe.policy.megatron_cfg
    check_split(recipe.policy.model, m.tensor_model_parallel_size, m.pipeline_model_parallel_size,
                "policy.model.")
    model_parallel = m.tensor_model_parallel_size * m.pipeline_model_parallel_size
    if world_size % model_parallel:
        raise ValueError(f"{world_size} ranks cannot hold TP={m.tensor_model_parallel_size} x "
                         f"PP={m.pipeline_model_parallel_size} (need a multiple of {model_parallel})")
    return parallel.Layout(m.tensor_model_parallel_size, m.pipeline_model_parallel_size,
                           world_size // model_parallel)


def run_rank(rank: int, recipe: EmbeddedRecipe, resume: bool, world_size: int,
             progress_bar: bool = True) -> dict:
    from nemo_gradalign.trainer.loop import Trainer

    parallel.init_distributed(layout_for(recipe, world_size), seed=recipe.grpo.seed)
    return Trainer(recipe, rank, progress_bar).fit(resume)


def main(recipe: EmbeddedRecipe, resume: bool, ranks: int | None, overwrite: bool = False,
         allow_data_change: bool = False) -> None:
    """Check the data and the run folder, then join torchrun/srun ranks when launched that way,
    else spawn the ranks locally. Only the first process claims the folder; the ranks it spawns
    hold its lock too, so the folder stays locked until the last of them has exited."""
    import os

    from nemo_gradalign.trainer.run_folder import RunFolder
    from nemo_gradalign.trainer.sets import checked_data

    m = recipe.policy.megatron_cfg
    launched = parallel.launched_world_size()
    if launched is not None and ranks is not None and ranks != launched:
        raise ValueError(f"--ranks {ranks} but the launcher started {launched} ranks (WORLD_SIZE); drop --ranks")
    world = launched or ranks or m.tensor_model_parallel_size * m.pipeline_model_parallel_size
    layout_for(recipe, world)
    if launched is not None and os.environ.get("RANK") != "0":
        parallel.run_on_ranks(run_rank, world, recipe, resume, world)
        return
    data, new_schedule = checked_data(recipe)  # before the folder is touched: bad data never costs an old run
    folder = RunFolder.of(recipe)
    with folder.claim(recipe.model_dump(mode="json"), world, resume, overwrite, data, allow_data_change,
                      new_schedule):
        parallel.run_on_ranks(run_rank, world, recipe, resume, world, held=tuple(folder.held))
