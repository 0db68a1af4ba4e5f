"""The paper's three data regimes as transforms of a clean task family (DESIGN.md §1).

- noisy: a fraction ρ of training problems is tagged corrupted and rewarded Bernoulli(0.5) whatever
  the answer, in selection and training alike (the official code's unreliable reward);
- imbalance: the target operation is ~10% of the pool; the trusted validation set and the
  evaluation set are the target operation only;
- low_utility: a fraction of the pool carries a wrong answer key (random digits): rewarding it
  teaches nothing true.
Validation and evaluation sets are always clean and disjoint from the pool and from each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nemo_gradalign.data import tasks

Regime = Literal["clean", "noisy", "imbalance", "low_utility"]


class DataConfig(BaseModel):
    """The recipe's ``data:`` block for the embedded task family."""

    model_config = ConfigDict(extra="forbid")

    regime: Regime = "noisy"
    ops: list[str] = Field(["sort"], min_length=1)
    lengths: list[int] = Field([3, 4, 5], min_length=1)
    pool_size: int = Field(2048, gt=0)
    validation_size: int = Field(256, gt=0)
    eval_size: int = Field(256, gt=0)
    warmup_size: int = Field(2000, ge=0)
    corrupt_fraction: float = Field(0.5, ge=0, le=1)
    target_op: str = "sort_desc"
    target_fraction: float = Field(0.1, gt=0, le=1)
    wrong_key_fraction: float = Field(0.5, ge=0, le=1)
    seed: int = 0
    # Read a set instead of generating it: a save_to_disk folder (split = the set's name),
    # .jsonl/.json/.parquet, or a hub dataset name (data/store.py). The regime's transform
    # (noise, wrong keys) still applies to a loaded pool.
    pool_source: str | None = None
    validation_source: str | None = None
    eval_source: str | None = None

    @model_validator(mode="after")
    def _known(self):
        for op in [*self.ops, self.target_op]:
            if op not in tasks.OPS:
                raise ValueError(f"unknown op {op!r}; choose from {sorted(tasks.OPS)}")
        for length in self.lengths:
            if not tasks.MIN_LEN <= length <= tasks.MAX_LEN:
                raise ValueError(f"length {length} outside {tasks.MIN_LEN}..{tasks.MAX_LEN}")
        if self.regime == "imbalance" and set(self.ops) <= {self.target_op}:
            raise ValueError("imbalance needs at least one op besides target_op")
        self._check_capacity()
        return self

    def _check_capacity(self) -> None:
        """Generation draws distinct problems; asking for more than exist would loop forever."""
        sizes = dict(pool_size=self.pool_size, validation_size=self.validation_size,
                     eval_size=self.eval_size, warmup_size=self.warmup_size)
        demands = []
        if self.regime == "imbalance":
            n_target = max(1, round(self.target_fraction * self.pool_size))
            demands.append((self.eval_size + self.validation_size + n_target,
                            dict(eval_size=self.eval_size, validation_size=self.validation_size,
                                 target_problems=n_target), {self.target_op}))
            others = set(self.ops) - {self.target_op}
            rest = self.pool_size - n_target + (0 if self.target_op in self.ops else self.warmup_size)
            demands.append((rest, dict(pool_size_minus_target=self.pool_size - n_target,
                                       **({} if self.target_op in self.ops else {"warmup_size": self.warmup_size})),
                            others))
        every_op = {*self.ops, *([self.target_op] if self.regime == "imbalance" else [])}
        demands.append((sum(sizes.values()), sizes, every_op))
        for need, parts, ops in demands:
            have = tasks.distinct_problems(ops, self.lengths)
            if need > have:
                detail = " + ".join(f"{k} {v}" for k, v in parts.items())
                raise ValueError(f"the sets need {need} distinct problems ({detail}) but ops {sorted(ops)} x "
                                 f"lengths {sorted(set(self.lengths))} have only {have}; lower the sizes "
                                 "or add lengths or ops")


@dataclass
class TaskSets:
    warmup: list[tasks.Problem]
    pool: list[tasks.Problem]
    validation: list[tasks.Problem]
    evaluation: list[tasks.Problem]


def _seeded_subset(n: int, fraction: float, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[: round(fraction * n)].tolist()


def corrupt(problems: list[tasks.Problem], fraction: float, seed: int) -> None:
    """Tag a seeded ``fraction`` of the problems as corrupted (noisy reward)."""
    for i in _seeded_subset(len(problems), fraction, seed):
        problems[i].tags["corrupted"] = True


def wrong_keys(problems: list[tasks.Problem], fraction: float, seed: int) -> None:
    """Give a seeded ``fraction`` of the problems a random (wrong) answer key."""
    gen = torch.Generator().manual_seed(seed + 1)
    for i in _seeded_subset(len(problems), fraction, seed):
        p = problems[i]
        key = torch.randint(0, 10, (len(p.digits),), generator=gen).tolist()
        if [tasks.DIGIT0 + d for d in key] == p.true_answer:
            key[0] = (key[0] + 1) % 10
        p.key, p.tags["wrong_key"] = key, True


def build(cfg: DataConfig) -> TaskSets:
    """The regime's sets: generated (disjoint) unless a ``*_source`` names stored ones."""
    from nemo_gradalign.data.store import load_problems

    sets = generate_sets(cfg)
    if cfg.pool_source:
        sets.pool = load_problems(cfg.pool_source, "pool")
        if cfg.regime == "noisy":
            corrupt(sets.pool, cfg.corrupt_fraction, cfg.seed * 10 + 6)
        elif cfg.regime == "low_utility":
            wrong_keys(sets.pool, cfg.wrong_key_fraction, cfg.seed * 10 + 7)
    if cfg.validation_source:
        sets.validation = load_problems(cfg.validation_source, "validation")
    if cfg.eval_source:
        sets.evaluation = load_problems(cfg.eval_source, "evaluation")
    return sets


def generate_sets(cfg: DataConfig) -> TaskSets:
    """Disjoint warm-up / pool / validation / evaluation sets for the configured regime."""
    seen: set = set()
    s = cfg.seed * 10
    if cfg.regime == "imbalance":
        others = [op for op in cfg.ops if op != cfg.target_op]
        n_target = max(1, round(cfg.target_fraction * cfg.pool_size))
        evaluation = tasks.generate([cfg.target_op], cfg.lengths, cfg.eval_size, s + 1, 300_000, seen)
        validation = tasks.generate([cfg.target_op], cfg.lengths, cfg.validation_size, s + 2, 200_000, seen)
        target = tasks.generate([cfg.target_op], cfg.lengths, n_target, s + 3, 0, seen)
        rest = tasks.generate(others, cfg.lengths, cfg.pool_size - n_target, s + 4, n_target, seen)
        for p in target:
            p.tags["target"] = True
        pool = target + rest
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(s + 5)).tolist()
        pool = [pool[i] for i in order]
        for new_id, p in enumerate(pool):
            p.problem_id = new_id
    else:
        evaluation = tasks.generate(cfg.ops, cfg.lengths, cfg.eval_size, s + 1, 300_000, seen)
        validation = tasks.generate(cfg.ops, cfg.lengths, cfg.validation_size, s + 2, 200_000, seen)
        pool = tasks.generate(cfg.ops, cfg.lengths, cfg.pool_size, s + 3, 0, seen)
        if cfg.regime == "noisy":
            corrupt(pool, cfg.corrupt_fraction, s + 6)
        elif cfg.regime == "low_utility":
            wrong_keys(pool, cfg.wrong_key_fraction, s + 7)
    warmup = tasks.generate(cfg.ops, cfg.lengths, cfg.warmup_size, s + 8, 400_000, seen)
    return TaskSets(warmup, pool, validation, evaluation)
