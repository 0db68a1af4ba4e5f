"""The embedded GRPO loop with GradAlign selection, on a megatron-core GPT (any TP/PP/DP).

The Trainer lists its components up front; each is built from the recipe, and resume is a
property of each component (state_dict/load_state_dict), not a special code path.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from nemo_gradalign import grpo
from nemo_gradalign.data import regimes
from nemo_gradalign.engine import EngineGroups, GradientEngine
from nemo_gradalign.megatron.policy import Policy, adam_divisor
from nemo_gradalign.megatron.problem_runner import LossSettings, ProblemRunner
from nemo_gradalign.megatron.step import microbatch_rows
from nemo_gradalign.megatron.update_reference import UpdateReference
from nemo_gradalign.rollouts import ProblemRollouts
from nemo_gradalign.selection.schedules import MemorySchedule, RoundSchedule, StepSchedule
from nemo_gradalign.selection.selector import Selector
from nemo_gradalign.trainer import data_fingerprint
from nemo_gradalign.trainer.checkpoint import CheckpointManager, Stateful
from nemo_gradalign.trainer.compute import ComputeMeter, rollout_tokens
from nemo_gradalign.trainer.config import EmbeddedRecipe
from nemo_gradalign.trainer.evaluate import evaluate
from nemo_gradalign.trainer.memory_feedback import MemoryFeedback, memory_feedback
from nemo_gradalign.trainer.metrics import MetricsLog
from nemo_gradalign.trainer.progress_bar import describe, open_bar
from nemo_gradalign.trainer.rollouts import collect_rollouts
from nemo_gradalign.trainer.sets import build_schedule, build_sets
from nemo_gradalign.trainer.update import grpo_step
from nemo_gradalign.trainer.warmup import supervised_warmup


class _Progress:
    """Loop position and RNG state, checkpointed like any other component."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])


class Trainer:
    policy: Policy
    optimizer: object
    sets: regimes.TaskSets
    engine: GradientEngine
    runner: ProblemRunner
    selector: Selector | None
    schedule: RoundSchedule | StepSchedule | MemorySchedule
    feedback: MemoryFeedback | None  # the memory schedule's G, reading and record around each update
    checkpointer: CheckpointManager
    metrics: MetricsLog

    def __init__(self, recipe: EmbeddedRecipe, rank: int, progress_bar: bool = True):
        self.recipe, self.rank = recipe, rank
        g, ga = recipe.grpo, recipe.gradalign
        torch.manual_seed(g.seed)
        self.policy = Policy(recipe.policy.model)
        opt = recipe.policy.megatron_cfg.optimizer
        self.optimizer = self.policy.make_optimizer(opt.lr, opt.weight_decay, (opt.adam_beta1, opt.adam_beta2))
        self.sets = build_sets(recipe)
        self.pool = self.sets.pool  # schedules hand out indices into this list
        self.data = {data_fingerprint.FILE: data_fingerprint.fingerprints(recipe, self.sets)}
        temperature = recipe.policy.generation.temperature
        self.loss = LossSettings("leave_one_out" if g.use_leave_one_out_baseline else "mean",
                                 g.normalize_rewards, "token_mean", temperature)
        score_loss = LossSettings(*ga.advantage.resolve(g.use_leave_one_out_baseline, g.normalize_rewards),
                                  ga.aggregation or "token_mean", temperature)
        self.engine = GradientEngine(self.policy.named_parameters(), EngineGroups.from_megatron(),
                                     ga.reference_dtype)
        self.runner = ProblemRunner(self.policy.model, score_loss, ga.max_rollouts_per_microbatch, ga.pack_rows)
        divisor = adam_divisor(self.optimizer) if ga.precondition == "adam" else None
        reference_loss = dataclasses.replace(
            score_loss, aggregation=grpo.reference_aggregation(score_loss.aggregation, ga.reference_weighting))
        reference_runner = ProblemRunner(self.policy.model, reference_loss, ga.max_rollouts_per_microbatch, ga.pack_rows)
        self.selector = (Selector(ga, self.engine, self.runner, self._validation_rollouts, divisor, reference_runner)
                         if ga.enabled else None)
        self.schedule = build_schedule(recipe, self.sets.pool, self.sets.validation)
        ck = recipe.checkpointing
        self.checkpointer = CheckpointManager(ck.checkpoint_dir, ck.keep_top_k, ck.metric_name)
        self.metrics = MetricsLog(recipe.logger.log_dir, enabled=rank == 0)
        self.progress = _Progress()
        self.progress_bar = progress_bar and rank == 0
        self.last_eval: dict = {}
        self.compute = ComputeMeter(g.generation_price)
        self._reusable: dict[int, ProblemRollouts] = {}
        self.feedback = memory_feedback(self.schedule, self.selector, self.engine, self.compute, self.pool, self.loss)

    # -- components -------------------------------------------------------------------------
    def components(self) -> dict:
        return {
            "policy/weights": self.policy.model.module,
            "policy/optimizer": self.optimizer,
            "gradalign/selector": self.selector or Stateful(dict, lambda s: None),
            "gradalign/schedule": self.schedule,
            "trainer": Stateful(self._trainer_state, self._load_trainer_state),
        }

    def _trainer_state(self) -> dict:
        return {**self.progress.state_dict(), "last_eval": self.last_eval,
                "reusable": dict(self._reusable), "compute": self.compute.state_dict()}

    def _load_trainer_state(self, state: dict) -> None:
        self.progress.load_state_dict(state)
        self.last_eval, self._reusable = state["last_eval"], dict(state["reusable"])
        if "compute" in state:  # checkpoints written before compute accounting start from zero
            self.compute.load_state_dict(state["compute"])

    # -- rollouts ----------------------------------------------------------------------------
    def _rollouts(self, problems, k: int, salt: str) -> list[ProblemRollouts]:
        rollouts = collect_rollouts(self.policy.model, problems, k, self.recipe.grpo.seed, salt,
                                    self.recipe.policy.generation.temperature)
        self.compute.add("generated", rollout_tokens(rollouts))
        return rollouts

    def _validation_rollouts(self, step: int) -> list[ProblemRollouts]:
        k = self.recipe.gradalign.validation.rollouts_per_problem
        rollouts = self._rollouts(self.sets.validation, k, f"validation/{step}")
        self.compute.add("validation_generated", rollout_tokens(rollouts))
        return rollouts

    def _budget_left(self) -> bool:
        """Steps left, and (when grpo.max_compute / max_cost are set) one of them not yet reached:
        a baseline budgeted both ways runs until it can be read at equal compute and equal cost."""
        g = self.recipe.grpo
        budgets = [spent < limit for limit, spent in ((g.max_compute, self.compute.compute),
                                                      (g.max_cost, self.compute.cost)) if limit is not None]
        return self.progress.step < g.max_num_steps and (not budgets or any(budgets))

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        resumed = None
        latest = self.checkpointer.latest() if resume else None
        if resume and latest is None:  # jobs/train.py refuses this before spawning; never start over
            raise FileNotFoundError(f"--resume: no complete checkpoint in {self.checkpointer.root}")
        if latest is not None:
            self.checkpointer.load(latest, self.components())
            resumed = self.progress.step
        else:
            w = self.recipe.policy.warmup
            supervised_warmup(self.policy, self.sets.warmup, w.steps, w.batch_size, w.lr, self.recipe.grpo.seed)
        self.metrics.start(resumed)
        if resumed is None:
            self._evaluate(0)
        g = self.recipe.grpo
        with open_bar(self.progress_bar) as bar:
            task = bar.add_task("GRPO", total=g.max_num_steps, completed=self.progress.step) if bar else None
            while self._budget_left():
                record = self.train_step(self.progress.step)
                self.progress.step += 1
                done = self.progress.step
                last = not self._budget_left()
                if done % g.val_period == 0 or last:
                    record.update(self._evaluate(done))
                if bar:
                    bar.update(task, completed=done, description=describe(record))
                if self.recipe.checkpointing.enabled and (
                        done % self.recipe.checkpointing.save_period == 0 or last):
                    self.checkpointer.save(done, self.components(), dict(self.last_eval),
                                           self.recipe.model_dump(mode="json"), self.data)
        return self.last_eval

    def _evaluate(self, step: int) -> dict:
        g = self.recipe.grpo
        result = evaluate(self.policy.model, self.sets.evaluation, g.val_generations, g.seed,
                          self.recipe.policy.generation.temperature)
        self.last_eval = result
        self.compute.total["eval_generated"] += g.val_generations * sum(sum(p.shape) for p in self.sets.evaluation)
        self.metrics.write({"step": step, "kind": "eval", **result, "compute/total": self.compute.compute,
                            "cost/total": self.compute.cost,
                            "compute/total_seconds": self.compute.total_seconds,
                            "tokens/total_eval_generated": self.compute.total["eval_generated"]})
        return result

    def train_step(self, step: int) -> dict:
        """Select (when the schedule says so), then one GRPO update."""
        t0 = time.perf_counter()
        record: dict = {"step": step + 1, "kind": "train"}
        candidates = self.schedule.candidates(step)
        if candidates is not None:
            record.update(self._select(step, candidates))
        ids = self.schedule.batch(step)
        trusted = [self.sets.validation[j] for j in self.schedule.trusted_picks]
        k = self.recipe.grpo.num_generations_per_prompt
        if self.schedule.reuses_selection_rollouts:  # (plain GRPO's trusted share rolls out on its own)
            batch = [self._reusable[i] for i in ids] + (self._rollouts(trusted, k, f"train/{step}") if trusted else [])
        else:  # the trusted share (validation.train_share) rolls out with the pool's picks, after them
            batch = self._rollouts([self.pool[i] for i in ids] + trusted, k, f"train/{step}")
        max_rows = self.recipe.policy.max_rollouts_per_microbatch
        if trusted and self.feedback is not None and self.recipe.gradalign.validation.g_from_update:
            trusted_rows, rows = sum(r.k for r in batch[len(ids):]), sum(r.k for r in batch)
            max_rows = max_rows or math.gcd(trusted_rows, rows)  # unset: the trusted groups fill microbatches
            self.feedback.check_capture(self.policy.model, trusted_rows, microbatch_rows(rows, max_rows))
        reading = self.feedback.reading(step, record, batch[len(ids):] if trusted else None) if self.feedback else None
        record["train/problems"], record["train/trusted_ids"] = len(batch), [p.problem_id for p in trusted]
        record["train/reward"] = (sum(float(r.rewards.mean()) for r in batch) / len(batch)) if batch else float("nan")
        capture, pool_at = None, 0
        if trusted and self.feedback is not None and self.feedback.from_update:  # G_next off this update:
            batch, pool_at = batch[len(ids):] + batch[:len(ids)], len(trusted)  # the trusted groups train first
            capture = UpdateReference(self.engine, sum(r.k for r in batch[:pool_at]))
        if batch:
            lf = self.recipe.loss_fn
            out = grpo_step(self.policy, self.optimizer, batch, self.loss, lf.ratio_clip_min, lf.ratio_clip_max,
                            lf.inner_epochs, max_rows, reading, capture)
            if capture is not None:
                self.feedback.take_update(step, out, record)
            if self.feedback is not None:
                record.update(self.feedback.record(step, ids, batch, out.pop("alignment", None), pool_at))
            record.update(out)
            self.compute.add("trained_forward", rollout_tokens(batch))
            self.compute.add("trained", lf.inner_epochs * rollout_tokens(batch))
        record["seconds"] = time.perf_counter() - t0
        record.update(self.compute.close_step(record["seconds"]))
        self.metrics.write(record)
        return record

    def _select(self, step: int, candidate_ids: list[int]) -> dict:
        ga = self.recipe.gradalign
        reuse = self.schedule.reuses_selection_rollouts
        k = self.recipe.grpo.num_generations_per_prompt if reuse else ga.rollouts_per_problem
        rollouts = self._rollouts([self.pool[i] for i in candidate_ids], k, f"candidates/{step}")
        keep = self.schedule.keep
        if self.selector is None:  # plain GRPO: the draw itself is the batch
            picked, record = list(range(len(rollouts)))[:keep], {}
        else:
            selection = self.selector.select(rollouts, keep, step)
            picked, record = selection.picked, dict(selection.metrics)
            self.compute.add("scored", record["gradalign/scored_tokens"])
            # one row per candidate: [score, pass rate, corrupted, target, wrong_key, rollout crc]
            record["gradalign/candidate_scores"] = [
                [float(selection.scores[i]), r.pass_rate, bool(r.tags.get("corrupted")),
                 bool(r.tags.get("target")), bool(r.tags.get("wrong_key")), r.fingerprint()]
                for i, r in enumerate(rollouts)]
        record["gradalign/picked_ids"] = [self.pool[candidate_ids[i]].problem_id for i in picked]
        self.schedule.set_selection([candidate_ids[i] for i in picked])
        self._reusable = {candidate_ids[i]: rollouts[i] for i in picked} if reuse else {}
        return record
