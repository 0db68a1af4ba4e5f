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


def _train(args) -> None:
    from nemo_gradalign.jobs import train
    from nemo_gradalign.trainer.config import load_embedded_recipe

    train.main(load_embedded_recipe(args.config, args.overrides), args.resume, args.ranks, args.overwrite,
               args.allow_data_change)


def _demo(args) -> None:
    from nemo_gradalign.jobs import demo

    seeds = [int(s) for s in args.seeds.split(",")]
    demo.run_demo(args.regime, args.methods.split(","), seeds, args.out_dir, args.workers, args.overrides)


def _launch(args) -> None:
    from nemo_gradalign.launcher import launch

    launch(args.recipe, args.cluster, args.nodes, args.time, args.dry_run, args.overrides, args.resume,
           args.overwrite, args.allow_data_change)


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

    train = sub.add_parser("train", help="run the embedded GRPO loop with GradAlign selection")
    train.add_argument("--config", required=True, help="recipe YAML (e.g. recipes/embedded/noisy.yaml)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="replace another run's metrics and checkpoints in logger.log_dir")
    train.add_argument("--allow-data-change", action="store_true",
                       help="--resume even though a data set's content differs from the checkpoint's")
    train.add_argument("--ranks", type=_positive, default=None,
                       help="local ranks to spawn (default TP x PP); under torchrun/srun it must match WORLD_SIZE")
    train.add_argument("overrides", nargs="*", help="NeMo RL-style overrides: key=value, ++new.key=value")
    train.set_defaults(func=_train)

    demo = sub.add_parser("demo", help="GradAlign vs plain GRPO and DAPO at equal steps and compute, on CPU: table and plot")
    demo.add_argument("--regime", default="noisy", choices=["noisy", "noisy_flip", "imbalance", "imbalance_length",
                                                         "low_utility", "low_utility_shuffled"])
    demo.add_argument("--methods", default="gradalign,grpo,dapo",
                      help="gradalign (= gradalign-memory, the schedule that won at equal compute on the tuning "
                      "seeds), gradalign-round, gradalign-step[-r<N>], gradalign-memory[-r<N>], grpo, dapo, random, "
                      "accgreedy, accfilter; controls run to the same compute as grpo and dapo: greso, "
                      "grpo-trusted, grpo-pooltrusted")
    demo.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    demo.add_argument("--workers", type=_positive, default=2, help="runs in parallel (one per core)")
    demo.add_argument("--out-dir", default="runs/demo")
    demo.add_argument("overrides", nargs="*", help="recipe overrides applied to every run")
    demo.set_defaults(func=_demo)

    launch = sub.add_parser("launch", help="submit a recipe to Slurm (checks everything first)")
    launch.add_argument("recipe", help="an embedded or a NeMo RL recipe")
    launch.add_argument("--cluster", required=True, help="launcher/clusters/<name>.yaml")
    launch.add_argument("--nodes", type=int, default=None,
                        help="nodes (default: the recipe's cluster.num_nodes, else 1); forwarded to NeMo RL")
    launch.add_argument("--time", default="01:00:00", help="Slurm time limit")
    launch.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
    launch.add_argument("--resume", action="store_true", help="embedded: continue the run in logger.log_dir")
    launch.add_argument("--overwrite", action="store_true", help="embedded: replace the run in logger.log_dir")
    launch.add_argument("--allow-data-change", action="store_true",
                        help="embedded: --resume even though a data set's content differs from the checkpoint's")
    launch.add_argument("overrides", nargs="*", help="recipe overrides (key=value, ++new.key=value)")
    launch.set_defaults(func=_launch)

    sub.add_parser("nemo-rl", help="NeMo RL's GRPO (its run_grpo.py) with GradAlign installed: "
                   "nemo-gradalign nemo-rl --config <recipe> [overrides]")
    return parser


def main(argv: list[str] | None = None) -> int:
    from nemo_gradalign.megatron.cpu_shim import quiet_expected_warnings

    quiet_expected_warnings()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["nemo-rl"]:  # everything after it belongs to NeMo RL's run_grpo.py
        from nemo_gradalign.integrations.nemo_rl.__main__ import main as run_nemo_rl

        run_nemo_rl(argv[1:])
        return 0
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides may follow options: `launch r.yaml --cluster c.yaml --dry-run a.b=1`
        if not hasattr(args, "overrides") or any("=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
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
