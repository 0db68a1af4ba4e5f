"""The score job's table: what each method picks, and how the scores spread."""

from __future__ import annotations

import math
import statistics

from rich.console import Console
from rich.table import Table


def method_summary(problems: list[dict], scores: list[float], picked: list[int]) -> dict:
    finite = [s for s in scores if math.isfinite(s)]
    chosen = [problems[i] for i in picked]
    return {
        "picked": len(picked),
        "corrupted_share": sum(p["corrupted"] for p in chosen) / max(1, len(chosen)),
        "mean_pass_rate": sum(p["pass_rate"] for p in chosen) / max(1, len(chosen)),
        "min": min(finite, default=float("nan")),
        "median": statistics.median(finite) if finite else float("nan"),
        "max": max(finite, default=float("nan")),
    }


def print_report(results: dict, path) -> None:
    console = Console()
    problems = results["problems"]
    n_corrupt = sum(p["corrupted"] for p in problems)
    n_uninf = sum(not p["informative"] for p in problems)
    layout = results["config"]["layout"]
    console.print(
        f"[bold]Pool[/bold] {len(problems)} problems ({n_corrupt} with noisy rewards), "
        f"{n_uninf} uninformative (all rollouts same reward); keeping {results['keep']} per method. "
        f"Layout TP={layout['tp']} PP={layout['pp']} DP={layout['dp']}; "
        f"validation-gradient scoring took {results['seconds_scoring']:.2f} s."
    )
    table = Table(title="What each method picks")
    for col in ("method", "picked", "corrupted share", "mean pass rate", "score min", "median", "max"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for method, res in results["methods"].items():
        s = method_summary(problems, res["scores"], res["picked"])
        table.add_row(method, str(s["picked"]), f"{s['corrupted_share']:.2f}", f"{s['mean_pass_rate']:.2f}",
                      f"{s['min']:.3f}", f"{s['median']:.3f}", f"{s['max']:.3f}")
    console.print(table)

    top = Table(title="Top problems by gradalign (cosine with the validation gradient)")
    for col in ("id", "problem", "pass rate", "noisy reward", "cosine"):
        top.add_column(col)
    ga = results["methods"]["gradalign"]
    for i in ga["picked"][:8]:
        p = problems[i]
        top.add_row(str(p["id"]), p["text"], f"{p['pass_rate']:.2f}", "yes" if p["corrupted"] else "no",
                    f"{ga['scores'][i]:+.4f}")
    console.print(top)
    console.print(f"results: {path}")
