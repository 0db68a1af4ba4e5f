"""The optional Adam-preconditioned reference (gradalign.precondition=adam): G / (√v̂ + ε).

After one real megatron Adam step with gradient g, v̂ = g² exactly in real arithmetic, so the
divisor is |g| + ε (checked to a few fp32 roundings); the preconditioned G is the plain G divided
elementwise by it and renormalised (the plain G is what the oracle tests check).
"""

from __future__ import annotations

import torch

from helpers import random_problems
from nemo_gradalign.engine import EngineGroups, GradientEngine
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.model import ModelSpec
from nemo_gradalign.megatron.policy import Policy, adam_divisor
from nemo_gradalign.megatron.problem_runner import ProblemRunner

VAL, TRAIN = random_problems(11, 5), random_problems(12, 4)
U = 2.0 ** -24


def _rank(rank, out):
    parallel.init_distributed(parallel.Layout())
    policy = Policy(ModelSpec(num_layers=1, hidden_size=32, num_attention_heads=4, vocab_size=32))
    optimizer = policy.make_optimizer(1e-3)
    engine = GradientEngine(policy.named_parameters(), EngineGroups.from_megatron())
    run = ProblemRunner(policy.model)
    divisor = adam_divisor(optimizer)
    params = list(engine.counted.params)
    assert all(divisor(p) is None for p in params)  # no optimizer state yet: G is left alone
    for problem in TRAIN:
        run(problem)
    grads = [p.main_grad.clone() for p in params]
    policy.step(optimizer)
    divisors = [divisor(p) for p in params]
    plain = engine.build_reference(VAL, run)
    plain_buffers = [b.clone() for b in plain.buffers]
    adam = engine.build_reference(VAL, run, divisor=divisor)
    torch.save({"grads": grads, "divisors": divisors, "plain": plain_buffers,
                "adam": [b.clone() for b in adam.buffers]}, out)


def test_adam_divisor_and_preconditioned_reference(tmp_path):
    parallel.spawn(_rank, 1, str(tmp_path / "out.pt"))
    got = torch.load(tmp_path / "out.pt")
    for g, d in zip(got["grads"], got["divisors"]):
        want = g.double().abs() + 1e-8
        assert ((d.double() - want).abs() <= 8 * U * want).all()
    scaled = torch.cat([(p.double() / d.double()).reshape(-1) for p, d in zip(got["plain"], got["divisors"])])
    scaled /= scaled.norm()
    adam = torch.cat([b.double().reshape(-1) for b in got["adam"]])
    assert abs(float(adam.norm()) - 1.0) < 1e-5
    # each coordinate: a few fp32 roundings of itself, relative to the unit-norm vector
    assert float((adam - scaled).abs().max()) <= 64 * U
    assert float((adam - torch.cat([p.double().reshape(-1) for p in got["plain"]])).abs().max()) > 1e-3
