"""The paper's three data regimes as transforms of a clean task family (DESIGN.md §1).

- noisy: a fraction ρ of training problems is tagged corrupted and rewarded Bernoulli(0.5) whatever
  the answer, in selection and training alike (the official code's unreliable reward);
- noisy_flip: problem-level label flips: a fraction ρ of the pool gets a near-miss wrong key
  (answer_keys.near_miss_key), so the near miss is rewarded and the true answer is not;
- imbalance: the target operation is ~10% of the pool; the trusted validation set and the
  evaluation set are the target operation only;
- imbalance_length: the rare target is a longer length of the same operation(s) (target_lengths,
  ~10% of the pool); validation and evaluation are that length only;
- low_utility: a fraction of the pool carries a wrong answer key (random digits): rewarding it
  teaches nothing true;
- low_utility_shuffled: a fraction of the pool carries a plausible wrong key, a random wrong
  arrangement of the prompt's digits (answer_keys.shuffled_key): sampled by the policy, but no
  closer to the true answer than chance.
Validation and evaluation sets are always clean and disjoint from the pool and from each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nemo_gradalign.data import answer_keys, tasks

Regime = Literal["clean", "noisy", "noisy_flip", "imbalance", "imbalance_length", "low_utility",
                 "low_utility_shuffled"]


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
    target_lengths: list[int] | None = None  # imbalance_length: the rare, longer lengths
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
        self._check_target_lengths()
        self._check_capacity()
        return self

    @property
    def all_lengths(self) -> list[int]:
        """Every length a set may hold (the rare target lengths too, under imbalance_length)."""
        extra = (self.target_lengths or []) if self.regime == "imbalance_length" else []
        return [*self.lengths, *(length for length in extra if length not in self.lengths)]

    def _check_target_lengths(self) -> None:
        if self.regime != "imbalance_length":
            return
        if not self.target_lengths:
            raise ValueError(f"data.target_lengths={self.target_lengths!r}: imbalance_length needs the rare, "
                             "longer lengths, e.g. [5]")
        for length in self.target_lengths:
            if not tasks.MIN_LEN <= length <= tasks.MAX_LEN:
                raise ValueError(f"data.target_lengths: length {length} outside {tasks.MIN_LEN}..{tasks.MAX_LEN}")
        if min(self.target_lengths) <= max(self.lengths):
            raise ValueError(f"data.target_lengths={self.target_lengths} must all be longer than data.lengths="
                             f"{self.lengths}: the rare target is a harder (longer) length of the same ops")

    def _check_capacity(self) -> None:
        """Generation draws distinct problems; asking for more than exist would loop forever."""
        sizes = dict(pool_size=self.pool_size, validation_size=self.validation_size,
                     eval_size=self.eval_size, warmup_size=self.warmup_size)
        demands = []  # (problems needed, what needs them, ops, lengths)
        if self.regime == "imbalance":
            n_target = max(1, round(self.target_fraction * self.pool_size))
            demands.append((self.eval_size + self.validation_size + n_target,
                            dict(eval_size=self.eval_size, validation_size=self.validation_size,
                                 target_problems=n_target), {self.target_op}, self.lengths))
            others = set(self.ops) - {self.target_op}
            rest = self.pool_size - n_target + (0 if self.target_op in self.ops else self.warmup_size)
            demands.append((rest, dict(pool_size_minus_target=self.pool_size - n_target,
                                       **({} if self.target_op in self.ops else {"warmup_size": self.warmup_size})),
                            others, self.lengths))
        if self.regime == "imbalance_length":
            n_target = max(1, round(self.target_fraction * self.pool_size))
            demands.append((self.eval_size + self.validation_size + n_target,
                            dict(eval_size=self.eval_size, validation_size=self.validation_size,
                                 target_problems=n_target), set(self.ops), self.target_lengths))
            demands.append((self.pool_size - n_target, dict(pool_size_minus_target=self.pool_size - n_target),
                            set(self.ops), self.lengths))
        every_op = {*self.ops, *([self.target_op] if self.regime == "imbalance" else [])}
        demands.append((sum(sizes.values()), sizes, every_op, self.all_lengths))
        for need, parts, ops, lengths in demands:
            have = tasks.distinct_problems(ops, lengths)
            if need > have:
                detail = " + ".join(f"{k} {v}" for k, v in parts.items())
                raise ValueError(f"the sets need {need} distinct problems ({detail}) but ops {sorted(ops)} x "
                                 f"lengths {sorted(set(lengths))} have only {have}; lower the sizes "
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
    for name, field in (("pool", "pool_source"), ("validation", "validation_source"), ("evaluation", "eval_source")):
        source = getattr(cfg, field)
        if source:
            try:
                setattr(sets, name, load_problems(source, name))
            except ValueError as err:
                raise ValueError(f"data.{field}: {err}") from None
    if cfg.pool_source:
        _transform(sets.pool, cfg)
    return sets


def generate_sets(cfg: DataConfig) -> TaskSets:
    """Disjoint warm-up / pool / validation / evaluation sets for the configured regime."""
    seen: set = set()
    s = cfg.seed * 10
    if cfg.regime == "imbalance":  # the rare target is an operation
        others = [op for op in cfg.ops if op != cfg.target_op]
        evaluation, validation, pool = _rare_sets(cfg, seen, ([cfg.target_op], cfg.lengths), (others, cfg.lengths))
    elif cfg.regime == "imbalance_length":  # the rare target is a longer length of the same ops
        evaluation, validation, pool = _rare_sets(cfg, seen, (cfg.ops, cfg.target_lengths), (cfg.ops, cfg.lengths))
    else:
        evaluation = tasks.generate(cfg.ops, cfg.lengths, cfg.eval_size, s + 1, 300_000, seen)
        validation = tasks.generate(cfg.ops, cfg.lengths, cfg.validation_size, s + 2, 200_000, seen)
        pool = tasks.generate(cfg.ops, cfg.lengths, cfg.pool_size, s + 3, 0, seen)
        _transform(pool, cfg)
    # the warm-up sees every length (the rare one too, as `imbalance` warms up every op): the rare
    # skill starts learnable, with mixed pass rates; rarity is in the RL pool
    warmup = tasks.generate(cfg.ops, cfg.all_lengths, cfg.warmup_size, s + 8, 400_000, seen)
    return TaskSets(warmup, pool, validation, evaluation)


def _transform(pool: list[tasks.Problem], cfg: DataConfig) -> None:
    """The regime's noise or wrong keys, on a generated or a loaded pool (seeds as before)."""
    s = cfg.seed * 10
    if cfg.regime == "noisy":
        corrupt(pool, cfg.corrupt_fraction, s + 6)
    elif cfg.regime == "low_utility":
        wrong_keys(pool, cfg.wrong_key_fraction, s + 7)
    elif cfg.regime == "noisy_flip":
        answer_keys.assign(pool, cfg.corrupt_fraction, s + 6, answer_keys.near_miss_key)
    elif cfg.regime == "low_utility_shuffled":
        answer_keys.assign(pool, cfg.wrong_key_fraction, s + 7, answer_keys.shuffled_key, answer_keys.can_shuffle)


def _rare_sets(cfg: DataConfig, seen: set, rare: tuple[list, list], common: tuple[list, list]):
    """Evaluation, validation and the rare ~target_fraction of the pool drawn from ``rare``
    (ops, lengths); the rest of the pool from ``common``; the pool shuffled and renumbered."""
    s = cfg.seed * 10
    n_target = max(1, round(cfg.target_fraction * cfg.pool_size))
    evaluation = tasks.generate(*rare, cfg.eval_size, s + 1, 300_000, seen)
    validation = tasks.generate(*rare, cfg.validation_size, s + 2, 200_000, seen)
    target = tasks.generate(*rare, n_target, s + 3, 0, seen)
    rest = tasks.generate(*common, cfg.pool_size - n_target, s + 4, n_target, seen)
    for p in target:
        p.tags["target"] = True
    pool = target + rest
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(s + 5)).tolist()
    pool = [pool[i] for i in order]
    for new_id, p in enumerate(pool):
        p.problem_id = new_id
    return evaluation, validation, pool
