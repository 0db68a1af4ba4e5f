"""`nemo-gradalign demo`: GradAlign against random and accuracy-greedy selection on CPU.

Runs the embedded recipe of a regime once per (method, seed), two single-rank runs at a time
(one per core), then prints the table and writes the plot.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nemo_gradalign.trainer.summary import mean_std, run_summary

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "embedded"
DEFAULT_METHODS = ("gradalign", "random", "accgreedy")


def recipe_path(regime: str) -> Path:
    path = RECIPES / f"{regime}.yaml"
    if not path.is_file():
        raise ValueError(f"no embedded recipe for regime {regime!r} at {path} "
                         "(run from a source checkout: pip install -e .)")
    return path


def _one_run(regime: str, method: str, seed: int, out_dir: str, overrides: list[str]) -> dict:
    """One single-rank training run in this (worker) process."""
    import torch

    from nemo_gradalign.jobs.train import run_rank
    from nemo_gradalign.megatron import parallel
    from nemo_gradalign.trainer.config import load_embedded_recipe
    from nemo_gradalign.trainer.run_folder import RunFolder

    torch.set_num_threads(1)
    log_dir = Path(out_dir) / regime / f"{method}-seed{seed}"
    recipe = load_embedded_recipe(recipe_path(regime), [
        f"gradalign.method={method}", f"grpo.seed={seed}", f"logger.log_dir={log_dir}", *overrides])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(parallel.free_port()),
                      RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    t0 = time.perf_counter()
    try:  # the demo owns its run folders: a rerun replaces them
        with RunFolder.of(recipe).claim(recipe.model_dump(mode="json"), 1, resume=False, overwrite=True):
            run_rank(0, recipe, resume=False, world_size=1, progress_bar=False)
    finally:
        parallel.shutdown()
    summary = run_summary(log_dir / "metrics.jsonl", regime)
    summary["wall_seconds"] = time.perf_counter() - t0
    return summary


def run_demo(regime: str, methods: list[str], seeds: list[int], out_dir: str, workers: int,
             overrides: list[str]) -> dict:
    from nemo_gradalign.megatron.cpu_shim import quiet_expected_warnings
    from nemo_gradalign.trainer.plots import demo_figure

    recipe_path(regime)
    quiet_expected_warnings()
    console = Console() if sys.stdout.isatty() else Console(width=110)  # logs: do not squeeze the table
    t0 = time.perf_counter()
    jobs = [(m, s) for s in seeds for m in methods]
    summaries: dict[str, list[dict]] = {m: [] for m in methods}
    ctx = multiprocessing.get_context("spawn")
    with console.status(f"{len(jobs)} runs ({regime}), {workers} at a time") as status, \
            ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(_one_run, regime, m, s, out_dir, overrides): (m, s) for m, s in jobs}
        for done, future in enumerate(futures, 1):
            method, seed = futures[future]
            summaries[method].append(future.result())
            status.update(f"{done}/{len(jobs)} runs done ({regime}); last: {method} seed {seed}")
    wall = time.perf_counter() - t0
    figure = demo_figure(summaries, regime, Path(out_dir) / regime / "demo.png")
    result = {"regime": regime, "seeds": seeds, "wall_seconds": wall, "summaries": summaries}
    (Path(out_dir) / regime / "demo_summary.json").write_text(json.dumps(result, indent=1))
    print_table(console, summaries, regime, seeds, wall, figure)
    return result


def print_table(console: Console, summaries: dict, regime: str, seeds: list[int], wall: float,
                figure: Path) -> None:
    tag = next((s["tag"] for runs in summaries.values() for s in runs), None)
    what = {"corrupted": "noisy", "target": "target", "wrong_key": "wrong-key"}.get(tag, "flagged")
    table = Table(title=f"GradAlign demo: {regime} regime, seeds {seeds} (mean±std)")
    for col in ("method", f"{what} picked r1", f"{what} picked run", "acc start", "acc final",
                "acc AUC", "s/run"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for method, runs in summaries.items():
        table.add_row(method, mean_std([r["first_round_share"] for r in runs]),
                      mean_std([r["run_share"] for r in runs]), mean_std([r["initial_acc"] for r in runs]),
                      mean_std([r["final_acc"] for r in runs]), mean_std([r["auc"] for r in runs]),
                      mean_std([r["wall_seconds"] for r in runs], 0))
    console.print(table)
    console.print(f"whole demo: {wall:.0f} s wall. Plot: {figure}")
