"""`nemo-gradalign demo`: GradAlign against plain GRPO and DAPO at equal steps and equal compute.

Runs the embedded recipe of a regime once per (method, seed), two single-rank runs at a time
(one per core): selection methods first; a budgeted baseline of a seed (jobs/demo_methods.py)
starts when that seed's selection runs are done, with their largest compute as its budget. Then
it prints the table and writes the plot.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nemo_gradalign.jobs.demo_methods import STEP_ALLOWANCE, is_budgeted, method_overrides
from nemo_gradalign.trainer.summary import mean_area, mean_std, run_summary, value_at

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "embedded"
DEFAULT_METHODS = ("gradalign", "grpo", "dapo")


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
        *method_overrides(method), f"grpo.seed={seed}", f"logger.log_dir={log_dir}", *overrides])
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
    console = Console() if sys.stdout.isatty() else Console(width=180)  # logs: do not squeeze the table
    t0 = time.perf_counter()
    for m in methods:
        method_overrides(m)  # a bad name fails before any run
    summaries = _run_all(regime, methods, seeds, out_dir, workers, overrides, console)
    wall = time.perf_counter() - t0
    figure = demo_figure(summaries, regime, Path(out_dir) / regime / "demo.png")
    result = {"regime": regime, "seeds": seeds, "wall_seconds": wall, "summaries": summaries,
              "compare": compare(summaries)}
    (Path(out_dir) / regime / "demo_summary.json").write_text(json.dumps(result, indent=1))
    print_table(console, summaries, regime, seeds, wall, figure)
    return result


def _run_all(regime, methods, seeds, out_dir, workers, overrides, console) -> dict[str, list[dict]]:
    """Selection runs first; a seed's budgeted baselines once its selection runs are done."""
    by_run: dict[tuple[str, int], dict] = {}
    first = [(m, s) for s in seeds for m in methods if not is_budgeted(m)]
    later = {s: [m for m in methods if is_budgeted(m)] for s in seeds}
    total = len(first) + sum(map(len, later.values()))
    ctx = multiprocessing.get_context("spawn")
    with console.status(f"{total} runs ({regime}), {workers} at a time") as status, \
            ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        running = {pool.submit(_one_run, regime, m, s, out_dir, overrides): (m, s) for m, s in first}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                method, seed = running.pop(future)
                by_run[(method, seed)] = future.result()
                status.update(f"{len(by_run)}/{total} runs done ({regime}); last: {method} seed {seed}")
                if later[seed] and all((m, seed) in by_run for m in methods if not is_budgeted(m)):
                    extra = _budget(by_run, methods, seed)
                    for m in later.pop(seed):
                        running[pool.submit(_one_run, regime, m, seed, out_dir, overrides + extra)] = (m, seed)
                    later[seed] = []
    return {m: [by_run[(m, s)] for s in seeds] for m in methods}


def _budget(by_run: dict, methods: list[str], seed: int) -> list[str]:
    """A budgeted baseline's stop: the seed's largest selection compute and cost at scale, both
    reached (and ample steps)."""
    refs = [by_run[(m, seed)] for m in methods if not is_budgeted(m)]
    if not refs:
        return []
    return [f"grpo.max_compute={max(r['compute'] for r in refs)}", f"grpo.max_cost={max(r['cost'] for r in refs)}",
            f"grpo.max_num_steps={STEP_ALLOWANCE * max(r['steps'] for r in refs)}"]


def compare(summaries: dict[str, list[dict]], ref_name: str | None = None) -> dict[str, list[dict]]:
    """Per run: accuracy area and accuracy at the reference's steps and compute, seed by seed.
    The reference defaults to the first selection method (the demo's GradAlign)."""
    ref_name = ref_name or next((m for m in summaries if not is_budgeted(m)), None)
    out = {}
    for method, runs in summaries.items():
        rows = []
        for i, run in enumerate(runs):
            ref = summaries[ref_name][i] if ref_name else run
            rows.append({"auc_steps": mean_area(run["curve"], ref["steps"]),
                         "auc_compute": mean_area(run["compute_curve"], ref["compute"]),
                         "auc_cost": mean_area(run["cost_curve"], ref["cost"]),
                         "acc_at_steps": value_at(run["curve"], ref["steps"]),
                         "acc_at_compute": value_at(run["compute_curve"], ref["compute"])})
        out[method] = rows
    return out


def print_table(console: Console, summaries: dict, regime: str, seeds: list[int], wall: float,
                figure: Path) -> None:
    tag = next((s["tag"] for runs in summaries.values() for s in runs), None)
    what = {"corrupted": "noisy", "target": "target", "wrong_key": "wrong-key"}.get(tag, "flagged")
    ref = next((m for m in summaries if not is_budgeted(m)), None)
    table = Table(title=f"GradAlign demo: {regime} regime, seeds {seeds} (mean±std); "
                        f"equal steps / compute / cost at scale = {ref}'s, seed by seed")
    for col in ("method", "steps", "cost M", "compute M", "step s", f"{what} picked", "acc start", "acc end",
                "AUC steps", "acc @compute", "AUC compute", "AUC cost"):
        table.add_column(col, justify="left" if col == "method" else "right")
    rows = compare(summaries)
    for method, runs in summaries.items():
        cmp = rows[method]
        table.add_row(method, mean_std([r["steps"] for r in runs], 0), mean_std([r["cost"] / 1e6 for r in runs], 2),
                      mean_std([r["compute"] / 1e6 for r in runs], 2), mean_std([r["seconds"] for r in runs], 0),
                      mean_std([r["run_share"] for r in runs]), mean_std([r["initial_acc"] for r in runs]),
                      mean_std([r["final_acc"] for r in runs]),
                      *(mean_std([c[k] for c in cmp]) for k in ("auc_steps", "acc_at_compute", "auc_compute",
                                                                "auc_cost")))
    console.print(table)
    console.print("cost: at scale, in trained tokens' forward+backward (a generated token 2, a forward 1/3; NeMo RL's "
                  "published 8B step split); compute: forward token-passes (generation 1, forward+backward 3; "
                  "docs/training.md). AUC: mean accuracy over [0, budget]; step s: summed step seconds.")
    console.print(f"whole demo: {wall:.0f} s wall. Plot: {figure}")
