"""Step time of grpo_step with alignment read from the training pass vs a plain step.

The embedded demo's shape by default (16 problems × 8 rollouts of 13 tokens, the demo's model,
fp32, μ = 2 inner epochs, one rank, one thread): each repeat runs a plain step and a reading
step back to back, in alternating order, on the same policy; printed are the minima, the
ratio of the minima and the median of the per-pair ratios. For scale, the same pairs also run a
plain step plus the engine's packed scoring of the same batch (the separate pass in-pass
reading replaces). The reader's extra work is one per-problem weight gradient per layer in the
first inner epoch — a weight gradient's flops, so with μ inner epochs about 1/(1 + 3μ) of the
step's (≈ 1.14× at μ = 2) — plus the reads against G and the regrouping copies.

``--shape 268M|939M`` runs issue 18's GPU shapes instead (those of benchmarks/gpu_scoring.py: bf16,
16 layers, 8 rollouts × 1024 tokens, 32 resp. 16 problems in 16- resp. 8-row microbatches, μ as
given — NeMo RL's recipes take one optimizer step per batch, μ = 1) and prints peak GPU memory;
``--shape tiny`` is that code at a toy size (a CPU smoke test).

``--rows R`` trains microbatches of R rollouts (NeMo RL's train_micro_batch_size; fewer than a
group's 8 splits problems): the read is then token by token with projected squared norms of
dimension ``--projection``² per weight shard (megatron/projected_read.py), and the first step
also reads the same batch at the same weights with whole problems per microbatch (exact) to
print the projection's error on ‖g‖² and the cosine. Run:
  python benchmarks/inpass_cost.py [--repeats 20] [--problems 16] [--inner-epochs 2]
  python benchmarks/inpass_cost.py --rows 2 --projection 32
  python benchmarks/inpass_cost.py --shape 268M --inner-epochs 1 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_scoring import SHAPES  # noqa: E402  (issue 19's GPU shapes)
from scoring import make_problems  # noqa: E402  (same synthetic rollouts as benchmarks/scoring.py)

from nemo_gradalign.engine import EngineGroups, GradientEngine  # noqa: E402
from nemo_gradalign.megatron import parallel  # noqa: E402
from nemo_gradalign.megatron.in_pass import AlignmentReading  # noqa: E402
from nemo_gradalign.megatron.model import ModelSpec  # noqa: E402
from nemo_gradalign.megatron.policy import Policy  # noqa: E402
from nemo_gradalign.megatron.problem_runner import LossSettings, ProblemRunner  # noqa: E402
from nemo_gradalign.trainer.update import grpo_step  # noqa: E402

DEMO = ModelSpec(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=32, max_sequence_length=14)
LOSS = LossSettings("mean", True, "token_mean")  # the demo's trainer settings


def _setup(shape: str, problems: int):
    """(model spec, trained batch, validation problems, rows per microbatch or None, thread count)."""
    if shape == "demo":
        return (DEMO, make_problems(problems, DEMO.vocab_size, 1, 7, 6),
                make_problems(64, DEMO.vocab_size, 2, 7, 6), None)
    spec, n, prompt, response, rows = SHAPES[shape]
    if shape not in ("tiny", "cpu"):
        spec = spec.model_copy(update={"dtype": "bfloat16"})
    return (spec, make_problems(n, spec.vocab_size, 1, prompt, response),
            make_problems(4, spec.vocab_size, 2, prompt, response), rows)


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _peak_gib(fn) -> float:
    """Peak GPU memory (GiB) of one call; nan without a GPU."""
    if not torch.cuda.is_available():
        return float("nan")
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated() / 2**30


def _projection_error(spec, batch, validation, rows, inner_epochs, projection) -> str:
    """At the same first weights: the projected read (``rows`` per microbatch) against the exact
    one (whole problems per microbatch), as relative errors on ‖g‖² and absolute on the cosine."""
    found = []
    for mb, dim in ((rows, projection), (batch[0].k * 2, None)):
        policy = Policy(spec)
        engine = GradientEngine(policy.named_parameters(), EngineGroups.from_megatron())
        runner = ProblemRunner(policy.model, LOSS, max_rows=mb, pack_rows=mb)
        reading = AlignmentReading(engine, engine.build_reference(validation, runner), dim)
        found.append(grpo_step(policy, policy.make_optimizer(1e-6), batch, LOSS, 0.2, 0.2, inner_epochs, mb,
                               reading)["alignment"])
    projected, exact = found
    keep = ~exact.zero_gradient
    sq = ((projected.sqnorm - exact.sqnorm).abs() / exact.sqnorm)[keep]
    cos = (projected.cosine() - exact.cosine()).abs()[keep]
    return (f"projected k={projection}x{projection} vs exact over {int(keep.sum())} problems: |rel err| of ||g||^2 "
            f"median {float(sq.median()):.4f} max {float(sq.max()):.4f}; |cos err| median {float(cos.median()):.2e} "
            f"max {float(cos.max()):.2e} (cosines' spread {float(exact.cosine()[keep].std()):.2e})")


def _run(rank, shape, repeats, problems, inner_epochs, rows_override=None, projection=32):
    torch.set_num_threads(1)
    parallel.init_distributed(parallel.Layout())
    spec, batch, validation, rows = _setup(shape, problems)
    rows = rows_override or rows
    error = (_projection_error(spec, batch, validation, rows, inner_epochs, projection)
             if rows and rows % batch[0].k else None)
    policy = Policy(spec)
    optimizer = policy.make_optimizer(5e-4 if shape == "demo" else 1e-6)
    engine = GradientEngine(policy.named_parameters(), EngineGroups.from_megatron())
    packed = ProblemRunner(policy.model, LOSS, max_rows=rows, pack_rows=rows or 128)
    reference = engine.build_reference(validation, packed)
    reading = AlignmentReading(engine, reference, projection)

    def step(read):
        return _timed(lambda: grpo_step(policy, optimizer, batch, LOSS, 0.2, 0.2, inner_epochs, rows, read))

    def step_and_score():
        return _timed(lambda: engine.score(batch, packed, reference)) + step(None)

    step(None), step(reading), step_and_score()  # warm-up
    plain, read, ratios, separate = [], [], [], []
    for i in range(repeats):
        order = (None, reading) if i % 2 == 0 else (reading, None)
        times = {id(r): step(r) for r in order}
        plain.append(times[id(None)])
        read.append(times[id(reading)])
        ratios.append(read[-1] / plain[-1])
        separate.append(step_and_score())
    peaks = [_peak_gib(lambda r=r: step(r)) for r in (None, reading)]
    tokens = sum(p.tokens.numel() for p in batch)
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} thread"
    print(f"grpo_step at shape {shape}: {len(batch)} problems x {batch[0].k} rollouts, {tokens} tokens, "
          f"{spec.num_layers} layers h{spec.hidden_size} {spec.dtype}, mu={inner_epochs}, "
          f"{rows or 'all'} rows per microbatch, 1 rank ({where}), {repeats} paired repeats:")
    print(f"  plain step          {min(plain) * 1e3:8.1f} ms (min)   {statistics.median(plain) * 1e3:8.1f} ms (median)"
          f"   peak {peaks[0]:.2f} GiB")
    print(f"  with in-pass reads  {min(read) * 1e3:8.1f} ms (min)   {statistics.median(read) * 1e3:8.1f} ms (median)"
          f"   peak {peaks[1]:.2f} GiB")
    print(f"  step + packed scoring of the batch (separate pass) {min(separate) * 1e3:8.1f} ms (min), "
          f"{min(separate) / min(plain):.3f}x")
    print(f"  ratio of minima {min(read) / min(plain):.3f}x   median of paired ratios "
          f"{statistics.median(ratios):.3f}x   (goal <= 1.10x)")
    if error:
        print(f"  {error}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--inner-epochs", type=int, default=2)
    parser.add_argument("--shape", default="demo", choices=["demo", "tiny", "cpu", "268M", "939M"])
    parser.add_argument("--rows", type=int, default=None, help="rollouts per training microbatch")
    parser.add_argument("--projection", type=int, default=32, help="k: k x k projection per weight shard")
    args = parser.parse_args()
    parallel.spawn(_run, 1, args.shape, args.repeats, args.problems, args.inner_epochs, args.rows, args.projection)


if __name__ == "__main__":
    main()
