"""`nemo-gradalign` command line."""

from __future__ import annotations

import argparse
import sys

# flag -> ScoreJobConfig field; defaults live in the config model only
_SCORE_FLAGS = {
    "pool_size": "problems in the candidate pool",
    "val_size": "problems in the trusted validation set",
    "rollouts": "rollouts per pool problem",
    "val_rollouts": "rollouts per validation problem",
    "corrupt_fraction": "share of pool problems whose reward is Bernoulli(0.5) noise",
    "warmup_steps": "supervised warm-up steps before scoring",
    "temperature": "sampling temperature",
    "seed": "seed for data, sampling and rewards",
    "out_dir": "where score_results.json goes",
}


def _score(args) -> None:
    from pydantic import ValidationError

    from nemo_gradalign.config import format_validation_error
    from nemo_gradalign.jobs import score_pool
    from nemo_gradalign.megatron.parallel import Layout

    given = {k: getattr(args, k) for k in _SCORE_FLAGS if getattr(args, k) is not None}
    try:
        cfg = score_pool.ScoreJobConfig(layout=Layout(tp=args.tp, pp=args.pp, dp=args.dp), **given)
    except ValidationError as err:
        raise ValueError(format_validation_error(err, "score")) from None
    score_pool.main(cfg)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from nemo_gradalign.jobs.score_pool import ScoreJobConfig

    parser = argparse.ArgumentParser(prog="nemo-gradalign", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score a generated pool with every method on a sharded GPT")
    score.add_argument("--tp", type=_positive, default=2, help="tensor-parallel size (default 2)")
    score.add_argument("--pp", type=_positive, default=1, help="pipeline-parallel size (default 1)")
    score.add_argument("--dp", type=_positive, default=1, help="data-parallel size (default 1)")
    fields = ScoreJobConfig.model_fields
    for name, help_text in _SCORE_FLAGS.items():
        kind = fields[name].annotation
        score.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                           help=f"{help_text} (default {fields[name].default})")
    score.set_defaults(func=_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nemo_gradalign.megatron.cpu_shim import quiet_expected_warnings

    quiet_expected_warnings()
    args = build_parser().parse_args(argv)
    from nemo_gradalign.megatron.parallel import RankFailed

    try:
        args.func(args)
    except ValueError as err:  # config errors carry the field name
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RankFailed as err:  # the full traceback is in err; the last line says what went wrong
        print(f"error: {err.summary}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
