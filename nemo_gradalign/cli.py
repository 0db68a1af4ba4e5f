"""`nemo-gradalign` command line."""

from __future__ import annotations

import argparse
import sys


def _score(args) -> None:
    from nemo_gradalign.jobs import score_pool
    from nemo_gradalign.megatron.parallel import Layout

    cfg = score_pool.ScoreJobConfig(
        layout=Layout(tp=args.tp, pp=args.pp, dp=args.dp), pool_size=args.pool_size,
        val_size=args.val_size, corrupt_fraction=args.corrupt_fraction, rollouts=args.rollouts,
        val_rollouts=args.val_rollouts, warmup_steps=args.warmup_steps, seed=args.seed,
        out_dir=args.out,
    )
    score_pool.main(cfg)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemo-gradalign", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score a generated pool with every method on a sharded GPT")
    score.add_argument("--tp", type=_positive, default=2, help="tensor-parallel size (default 2)")
    score.add_argument("--pp", type=_positive, default=1, help="pipeline-parallel size")
    score.add_argument("--dp", type=_positive, default=1, help="data-parallel size")
    score.add_argument("--pool-size", type=_positive, default=64)
    score.add_argument("--val-size", type=_positive, default=256)
    score.add_argument("--rollouts", type=_positive, default=8, help="rollouts per pool problem")
    score.add_argument("--val-rollouts", type=_positive, default=8)
    score.add_argument("--corrupt-fraction", type=float, default=0.5,
                       help="share of pool problems whose reward is Bernoulli(0.5) noise")
    score.add_argument("--warmup-steps", type=int, default=45)
    score.add_argument("--seed", type=int, default=0)
    score.add_argument("--out", default="runs/score")
    score.set_defaults(func=_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as err:  # config errors carry the field name
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
