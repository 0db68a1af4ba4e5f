"""`nemo-gradalign score`: score a pool of problems with every method on a sharded GPT.

Builds the tiny GPT at the chosen TP/PP/DP, warms it up, samples rollouts for a pool (a share of
it with noisy rewards) and a trusted validation set, builds the validation gradient, scores the
pool with every method and prints what each would pick.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nemo_gradalign.config import GradAlignConfig
from nemo_gradalign.data import regimes, tasks
from nemo_gradalign.engine import EngineGroups, GradientEngine
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.model import ModelSpec
from nemo_gradalign.megatron.policy import Policy
from nemo_gradalign.megatron.problem_runner import LossSettings, ProblemRunner
from nemo_gradalign.selection.scores import METHODS, reference_source, score_problems, top_indices
from nemo_gradalign.trainer.rollouts import collect_rollouts
from nemo_gradalign.trainer.warmup import supervised_warmup


class ScoreJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layout: parallel.Layout = parallel.Layout(tp=2)
    pool_size: int = Field(64, gt=0)
    val_size: int = Field(256, gt=0)
    corrupt_fraction: float = Field(0.5, ge=0, le=1)
    rollouts: int = Field(8, ge=2)
    val_rollouts: int = Field(8, ge=2)
    warmup_steps: int = Field(60, ge=0)
    temperature: float = Field(1.0, gt=0)
    seed: int = 0
    out_dir: str = "runs/score"
    model: ModelSpec = ModelSpec(vocab_size=tasks.VOCAB_SIZE, max_sequence_length=tasks.MAX_SEQUENCE)
    gradalign: GradAlignConfig = GradAlignConfig(enabled=True)

    @model_validator(mode="after")
    def _layout_fits_model(self):
        m, lay = self.model, self.layout
        if m.num_layers % lay.pp:
            raise ValueError(f"layout.pp={lay.pp} must divide model.num_layers={m.num_layers}")
        if m.num_attention_heads % lay.tp or m.vocab_size % lay.tp:
            raise ValueError(f"layout.tp={lay.tp} must divide model.num_attention_heads="
                             f"{m.num_attention_heads} and model.vocab_size={m.vocab_size}")
        return self


def make_sets(cfg: ScoreJobConfig) -> regimes.TaskSets:
    """Disjoint warm-up, pool and validation problems (noisy regime); no evaluation set needed."""
    return regimes.build(regimes.DataConfig(
        regime="noisy", pool_size=cfg.pool_size, validation_size=cfg.val_size, eval_size=1,
        corrupt_fraction=cfg.corrupt_fraction, seed=cfg.seed))


def run_rank(rank: int, cfg: ScoreJobConfig) -> dict | None:
    parallel.init_distributed(cfg.layout, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    policy = Policy(cfg.model)
    model = policy.model
    sets = make_sets(cfg)
    pool, val = sets.pool, sets.validation
    supervised_warmup(policy, sets.warmup, cfg.warmup_steps, seed=cfg.seed)
    pool_r = collect_rollouts(model, pool, cfg.rollouts, cfg.seed, "pool", cfg.temperature)
    val_r = collect_rollouts(model, val, cfg.val_rollouts, cfg.seed, "val", cfg.temperature)

    ga = cfg.gradalign
    engine = GradientEngine(policy.named_parameters(), EngineGroups.from_megatron(), ga.reference_dtype)
    runner = ProblemRunner(model, LossSettings(*ga.advantage.resolve(False, False),
                                               ga.aggregation or "token_mean"), ga.max_rollouts_per_microbatch,
                          ga.pack_rows)
    t0 = time.perf_counter()
    stats = {"validation": engine.score(pool_r, runner, engine.build_reference(val_r, runner))}
    t1 = time.perf_counter()
    stats["pool"] = engine.score(pool_r, runner, engine.build_reference(pool_r, runner))

    rates = torch.tensor([r.pass_rate for r in pool_r])
    informative = torch.tensor([runner.has_gradient(r) for r in pool_r])
    keep = max(1, cfg.pool_size // ga.selection_ratio)
    results = {"config": cfg.model_dump(mode="json"), "keep": keep, "seconds_scoring": t1 - t0,
               "problems": [{"id": r.problem_id, "text": p.text(), "pass_rate": r.pass_rate,
                             "corrupted": bool(r.tags.get("corrupted")), "informative": bool(flag)}
                            for r, p, flag in zip(pool_r, pool, informative)],
               "methods": {}}
    for method in METHODS:
        source = reference_source(method)
        scores = score_problems(method, rates, informative, stats.get(source),
                                torch.Generator().manual_seed(cfg.seed), ga.uninformative,
                                ga.acc_low, ga.acc_high)
        results["methods"][method] = {"scores": scores.tolist(), "picked": top_indices(scores, keep)}
    if rank != 0:
        return None
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "score_results.json").write_text(json.dumps(results, indent=1))
    from nemo_gradalign.jobs.score_report import print_report

    print_report(results, out / "score_results.json")
    return results


def main(cfg: ScoreJobConfig) -> None:
    """Run on torchrun/srun ranks if launched that way, else spawn the layout's ranks locally."""
    parallel.run_on_ranks(run_rank, cfg.layout.world_size, cfg)
