"""Packed exact scoring vs one problem per backward, side by side in one run.

  demo  the embedded demo's model and candidate shape (64 problems × 8 rollouts of 13 tokens,
        fp32, one rank): the engine's score with one problem per pass, with problems packed into
        microbatches of R rows, and a plain training pass over the same packed rows (the floor);
        the reference build (256 validation problems) per problem and packed. Scores are
        compared in the same run (max relative difference of the cosines).
  pp2   PP=2 (two ranks), a 4-layer model, 64 problems: packed scoring (the problems are the
        microbatches of ONE pipeline schedule, so the stages stay busy) against a training
        pass over the same microbatches — 16 rows (2 problems each) and 8 rows (1 problem each:
        its tokens are then read in place, no regrouping copy) — and the one-flush-per-problem
        path (against 16-row training). ``pp2-long``: the same with 32 problems of 8 × 256
        tokens, closer to RL's long responses.

Timings are min over repeats, the compared paths interleaved in each repeat. Run:
  python benchmarks/packed_scoring.py [--repeats 5] [--part demo|pp2|pp2-long|all]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scoring import make_problems  # noqa: E402  (same synthetic rollouts as benchmarks/scoring.py)

from nemo_gradalign.engine import EngineGroups, GradientEngine  # noqa: E402
from nemo_gradalign.engine.grads import zero_grads  # noqa: E402
from nemo_gradalign.megatron import parallel  # noqa: E402
from nemo_gradalign.megatron.model import ModelSpec, build_gpt  # noqa: E402
from nemo_gradalign.megatron.problem_runner import (  # noqa: E402
    LossSettings, ProblemRunner, packed_microbatches, weighted_logprob_loss,
)
from nemo_gradalign.megatron.step import run_microbatches  # noqa: E402

DEMO = ModelSpec(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=32, max_sequence_length=14)
PP_MODEL = ModelSpec(num_layers=4, hidden_size=128, num_attention_heads=4, vocab_size=128, max_sequence_length=64)
LOSS = LossSettings("mean", True, "token_mean")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _train_pass(model, problems, rows, params):
    microbatches, _ = packed_microbatches(problems, LOSS, rows)
    run_microbatches(model, microbatches, weighted_logprob_loss)
    zero_grads(params)


def _demo(rank, repeats, out):
    torch.set_num_threads(1)
    parallel.init_distributed(parallel.Layout())
    model = build_gpt(DEMO)
    params = list(model.parameters())
    engine = GradientEngine(model.named_parameters(), EngineGroups.from_megatron())
    candidates = make_problems(64, DEMO.vocab_size, 1, 7, 6)
    validation = make_problems(256, DEMO.vocab_size, 2, 7, 6)
    runners = {"one/pass": ProblemRunner(model, LOSS, pack_rows=None),
               **{f"packed R={r}": ProblemRunner(model, LOSS, pack_rows=r) for r in (64, 128, 512)}}
    reference = engine.build_reference(validation, runners["one/pass"])
    cos = {name: engine.score(candidates, run, reference).cosine() for name, run in runners.items()}
    times = {name: [] for name in [*runners, "train pass R=512", "reference one/pass", "reference packed"]}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name].append(_timed(lambda: engine.score(candidates, run, reference)))
        times["train pass R=512"].append(_timed(lambda: _train_pass(model, candidates, 512, params)))
        times["reference one/pass"].append(_timed(lambda: engine.build_reference(validation, runners["one/pass"])))
        times["reference packed"].append(_timed(lambda: engine.build_reference(validation, runners["packed R=512"])))
    base = min(times["one/pass"])
    print(f"demo model, 64 candidates x 8 rollouts (fp32, 1 rank, {torch.get_num_threads()} thread):")
    for name, t in times.items():
        ratio = (min(times["reference one/pass"]) if name.startswith("reference") else base) / min(t)
        print(f"  {name:22s} {min(t) * 1e3:8.1f} ms   speed-up vs one/pass {ratio:6.2f}x")
    worst = max(float(((c - cos["one/pass"]).abs() / cos["one/pass"].abs().clamp_min(1e-6)).max())
                for c in cos.values())
    print(f"  max relative cosine difference packed vs one/pass: {worst:.1e}")


def _cpu_timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all ranks together): CPU time leaves out the machine's
    slow spells that wall time picks up, and the waits for the other stage."""
    import torch.distributed as dist

    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    spent = torch.tensor([time.process_time() - cpu])
    dist.all_reduce(spent)
    return time.perf_counter() - wall, float(spent)


def _pp2(rank, repeats, out, long=False):
    """``long``: 32 problems of 8 rollouts × 256 tokens (RL responses are long) instead of 64 × 48."""
    torch.set_num_threads(1)
    parallel.init_distributed(parallel.Layout(pp=2))
    spec = PP_MODEL.model_copy(update={"max_sequence_length": 256}) if long else PP_MODEL
    model = build_gpt(spec)
    params = list(model.parameters())
    engine = GradientEngine(model.named_parameters(), EngineGroups.from_megatron())
    problems = make_problems(32, spec.vocab_size, 3, 32, 224) if long else make_problems(64, spec.vocab_size, 3, 16, 32)
    one = ProblemRunner(model, LOSS, pack_rows=None)
    reference = engine.build_reference(problems[:16], ProblemRunner(model, LOSS, pack_rows=16))
    times = {}
    for _ in range(repeats):  # the compared paths interleaved, each over the same microbatches
        for rows in (16, 8):  # 2 problems per microbatch; 1 (read in place)
            runner = ProblemRunner(model, LOSS, pack_rows=rows)
            times.setdefault(f"train pass, {rows}-row microbatches", []).append(
                _cpu_timed(lambda: _train_pass(model, problems, rows, params)))
            times.setdefault(f"packed scoring, {rows}-row microbatches", []).append(
                _cpu_timed(lambda: engine.score(problems, runner, reference)))
        times.setdefault("one flush per problem", []).append(_cpu_timed(lambda: engine.score(problems, one, reference)))
    if rank == 0:
        shape = "32 problems x 8 rollouts of 256 tokens" if long else "64 problems x 8 rollouts of 48 tokens"
        print(f"PP=2, 4 layers h=128, {shape}; throughput vs a training "
              "pass over the same microbatches: wall (ratio of the minima; median ratio of back-to-back "
              "pairs) and CPU time of both ranks (median pair):")
        for name, t in times.items():
            train = times.get(f"train pass, {name.split(', ')[-1]}", times["train pass, 16-row microbatches"])
            wall = sorted(a[0] / b[0] for a, b in zip(train, t))[len(t) // 2]
            cpu = sorted(a[1] / b[1] for a, b in zip(train, t))[len(t) // 2]
            best = min(w for w, _ in t)
            print(f"  {name:40s} {best * 1e3:8.1f} ms   wall min/min {min(w for w, _ in train) / best:5.2f}"
                  f"  pair {wall:5.2f}   CPU pair {cpu:5.2f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--part", choices=["demo", "pp2", "pp2-long", "all"], default="all")
    args = parser.parse_args()
    if args.part in ("demo", "all"):
        parallel.spawn(_demo, 1, args.repeats, None)
    if args.part in ("pp2", "all"):
        parallel.spawn(_pp2, 2, args.repeats, None)
    if args.part in ("pp2-long", "all"):
        parallel.spawn(_pp2, 2, args.repeats, None, True)


if __name__ == "__main__":
    main()
