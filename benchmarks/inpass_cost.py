"""Step time of grpo_step with alignment read from the training pass vs a plain step.

The embedded demo's shape by default (16 problems × 8 rollouts of 13 tokens, the demo's model,
fp32, μ = 2 inner epochs, one rank, one thread): each repeat runs a plain step and a reading
step back to back, in alternating order, on the same policy; printed are the minima, the
ratio of the minima and the median of the per-pair ratios. For scale, the same pairs also run a
plain step plus the engine's packed scoring of the same batch (the separate pass in-pass
reading replaces). The reader's extra work is one per-problem weight gradient per layer in the
first inner epoch — a weight gradient's flops, so with μ inner epochs about 1/(1 + 3μ) of the
step's (≈ 1.14× at μ = 2) — plus the reads against G and the regrouping copies. Run:
  python benchmarks/inpass_cost.py [--repeats 20] [--problems 16] [--inner-epochs 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scoring import make_problems  # noqa: E402  (same synthetic rollouts as benchmarks/scoring.py)

from nemo_gradalign.engine import EngineGroups, GradientEngine  # noqa: E402
from nemo_gradalign.megatron import parallel  # noqa: E402
from nemo_gradalign.megatron.in_pass import AlignmentReading  # noqa: E402
from nemo_gradalign.megatron.model import ModelSpec  # noqa: E402
from nemo_gradalign.megatron.policy import Policy  # noqa: E402
from nemo_gradalign.megatron.step import LossSettings, ProblemRunner  # noqa: E402
from nemo_gradalign.trainer.update import grpo_step  # noqa: E402

DEMO = ModelSpec(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=32, max_sequence_length=14)
LOSS = LossSettings("mean", True, "token_mean")  # the demo's trainer settings


def _run(rank, repeats, problems, inner_epochs):
    torch.set_num_threads(1)
    parallel.init_distributed(parallel.Layout())
    policy = Policy(DEMO)
    optimizer = policy.make_optimizer(5e-4)
    engine = GradientEngine(policy.named_parameters(), EngineGroups.from_megatron())
    batch = make_problems(problems, DEMO.vocab_size, 1, 7, 6)
    reference = engine.build_reference(make_problems(64, DEMO.vocab_size, 2, 7, 6),
                                       ProblemRunner(policy.model, LOSS))
    reading = AlignmentReading(engine, reference)
    packed = ProblemRunner(policy.model, LOSS, pack_rows=128)

    def step(read):
        start = time.perf_counter()
        grpo_step(policy, optimizer, batch, LOSS, 0.2, 0.2, inner_epochs, None, read)
        return time.perf_counter() - start

    def step_and_score():
        start = time.perf_counter()
        engine.score(batch, packed, reference)
        return time.perf_counter() - start + step(None)

    step(None), step(reading), step_and_score()  # warm-up
    plain, read, ratios, separate = [], [], [], []
    for i in range(repeats):
        order = (None, reading) if i % 2 == 0 else (reading, None)
        times = {id(r): step(r) for r in order}
        plain.append(times[id(None)])
        read.append(times[id(reading)])
        ratios.append(read[-1] / plain[-1])
        separate.append(step_and_score())
    print(f"grpo_step, {problems} problems x 8 rollouts of 13 tokens, mu={inner_epochs}, demo model "
          f"(fp32, 1 rank, {torch.get_num_threads()} thread), {repeats} paired repeats:")
    print(f"  plain step          {min(plain) * 1e3:8.1f} ms (min)   {statistics.median(plain) * 1e3:8.1f} ms (median)")
    print(f"  with in-pass reads  {min(read) * 1e3:8.1f} ms (min)   {statistics.median(read) * 1e3:8.1f} ms (median)")
    print(f"  step + packed scoring of the batch (separate pass) {min(separate) * 1e3:8.1f} ms (min), "
          f"{min(separate) / min(plain):.3f}x")
    print(f"  ratio of minima {min(read) / min(plain):.3f}x   median of paired ratios "
          f"{statistics.median(ratios):.3f}x   (goal <= 1.10x)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--inner-epochs", type=int, default=2)
    args = parser.parse_args()
    parallel.spawn(_run, 1, args.repeats, args.problems, args.inner_epochs)


if __name__ == "__main__":
    main()
