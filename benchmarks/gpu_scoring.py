"""Scoring against a training pass over the same rows, at issue 19's two GPU shapes, side by side.

  training   forward+backward of the pool's rows packed into R-row microbatches (the floor)
  default    engine.score with ProblemRunner(model, max_rows=R): what the package does by default
  packed     every problem's gradient read from shared R-row passes (pack_rows=R)
  one/pass   one problem per forward+backward (pack_rows=None)
  packed-f32 packed, with the per-problem weight products cast to fp32 first (the read before the
             16-bit tensor-core products of per_problem.wide_product; on a CPU the same as packed)

Per path: min time over repeats (the paths interleaved in each repeat), tokens/s, throughput as a
fraction of training's, peak GPU memory (max over ranks) and the cosines' max relative difference
from one/pass. Shapes (bf16, local spec, 16 layers, 16 heads, vocab 32000, 8 rollouts × 1024 tokens):
268M = h1024, 32 problems, R=16; 939M = h2048, 16 problems, R=8.
  python benchmarks/gpu_scoring.py [--shapes 268M,939M] [--repeats 3] [--pp 2]
  python benchmarks/gpu_scoring.py --tiny      # the same code at a toy shape: a CPU smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from packed_scoring import LOSS, _train_pass  # noqa: E402  (the same training pass and loss)
from scoring import make_problems  # noqa: E402  (the same synthetic rollouts)

from nemo_gradalign.engine import EngineGroups, GradientEngine  # noqa: E402
from nemo_gradalign.megatron import parallel, per_problem  # noqa: E402
from nemo_gradalign.megatron.model import ModelSpec, build_gpt  # noqa: E402
from nemo_gradalign.megatron.problem_runner import ProblemRunner  # noqa: E402

_GPT = dict(num_layers=16, num_attention_heads=16, vocab_size=32000, max_sequence_length=1024, dtype="bfloat16")
SHAPES = {  # name -> (model, problems, prompt tokens, response tokens, rows per microbatch)
    "268M": (ModelSpec(hidden_size=1024, **_GPT), 32, 128, 896, 16),
    "939M": (ModelSpec(hidden_size=2048, **_GPT), 16, 128, 896, 8),
    "tiny": (ModelSpec(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=128,
                       max_sequence_length=32), 4, 8, 24, 16),
    # a CPU-sized step with a realistic shape ratio: groups of 8 in microbatches of 2 rows
    "cpu": (ModelSpec(num_layers=4, hidden_size=256, num_attention_heads=4, vocab_size=512,
                      max_sequence_length=256), 4, 64, 192, 2),
}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dist.barrier()


def _measure(fn) -> tuple[float, float]:
    """(seconds, peak GiB over ranks; nan without a GPU) of one call."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    seconds = time.perf_counter() - start
    if not torch.cuda.is_available():
        return seconds, float("nan")
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device="cuda")
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return seconds, float(peak)


def _cast_first(fn):
    """Run fn with the per-problem weight products cast to fp32 before the matmul."""
    wide, per_problem._WIDE_BMM = per_problem._WIDE_BMM, False
    try:
        return fn()
    finally:
        per_problem._WIDE_BMM = wide


def _bench(rank, shape, pp, repeats):
    parallel.init_distributed(parallel.Layout(pp=pp))
    spec, n, prompt, response, rows = SHAPES[shape]
    model = build_gpt(spec)
    params = list(model.parameters())
    engine = GradientEngine(model.named_parameters(), EngineGroups.from_megatron())
    problems = make_problems(n, spec.vocab_size, 1, prompt, response)
    runners = {"default": ProblemRunner(model, LOSS, max_rows=rows),
               "packed": ProblemRunner(model, LOSS, max_rows=rows, pack_rows=rows),
               "one/pass": ProblemRunner(model, LOSS, max_rows=rows, pack_rows=None)}
    reference = engine.build_reference(make_problems(4, spec.vocab_size, 2, prompt, response), runners["packed"])
    cosines = {name: engine.score(problems, run, reference).cosine() for name, run in runners.items()}  # warm-up
    cosines["packed-f32"] = _cast_first(lambda: engine.score(problems, runners["packed"], reference)).cosine()
    _train_pass(model, problems, rows, params)
    paths = {"training": lambda: _train_pass(model, problems, rows, params),
             **{name: (lambda run=run: engine.score(problems, run, reference)) for name, run in runners.items()},
             "packed-f32": lambda: _cast_first(lambda: engine.score(problems, runners["packed"], reference))}
    results = {name: [] for name in paths}
    for repeat in range(repeats):
        order = list(paths)[repeat % len(paths):] + list(paths)[:repeat % len(paths)]
        for name in order:
            results[name].append(_measure(paths[name]))
    if rank == 0:
        _report(shape, spec, pp, n * 8 * (prompt + response), rows, results, cosines)


def _report(shape, spec, pp, tokens, rows, results, cosines):
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    train = min(s for s, _ in results["training"])
    train_peak = max(p for _, p in results["training"])
    print(f"\n{shape}: {spec.num_layers} layers h{spec.hidden_size} {spec.dtype}, {tokens} tokens, "
          f"{rows}-row microbatches, PP={pp}, {device}")
    print(f"  {'path':10s} {'ms':>9s} {'tokens/s':>10s} {'x training':>10s} {'peak GiB':>9s} "
          f"{'x training':>10s} {'cos rel diff':>12s}")
    base = cosines["one/pass"].double()
    for name, runs in results.items():
        best, peak = min(s for s, _ in runs), max(p for _, p in runs)
        diff = (float(((cosines[name].double() - base).abs() / base.abs().clamp_min(1e-6)).max())
                if name in cosines else float("nan"))
        print(f"  {name:10s} {best * 1e3:9.1f} {tokens / best:10.0f} {train / best:10.2f} {peak:9.2f} "
              f"{peak / train_peak:10.2f} {diff:12.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="268M,939M")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pp", type=int, default=1, help="pipeline stages (one GPU each)")
    parser.add_argument("--tiny", action="store_true", help="toy shape only, for a CPU smoke test")
    args = parser.parse_args()
    shapes = ["tiny"] if args.tiny else args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {unknown}; known: {sorted(SHAPES)}")
    if torch.cuda.is_available() and torch.cuda.device_count() < args.pp:
        parser.error(f"--pp {args.pp} needs {args.pp} GPUs; this machine has {torch.cuda.device_count()}")
    for shape in shapes:
        parallel.spawn(_bench, args.pp, shape, args.pp, args.repeats)


if __name__ == "__main__":
    main()
