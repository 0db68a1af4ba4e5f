"""The demo's methods as recipe overrides, and which of them are budgeted baselines.

A selection method (GradAlign and the paper's baselines) runs its steps; a budgeted baseline
(plain GRPO, DAPO dynamic sampling, and the controls below) answers the user's question — same
compute, better model? — so it runs until its compute reaches the most any selection run of the
same seed spent, and is read both at that run's step count and at its compute.
"""

from __future__ import annotations

import re

# What `gradalign` means in the demo: the trusted set trains and steers (half of each batch from it,
# its groups' gradient is G, copied off each update for the next step), the memory picks the other
# half from the pool, and zero-gradient visits count as an alignment of 0 and are skipped as GRESO
# skips them. Chosen on tuning seeds 0-2 over the four regimes and both settings (docs/results.md):
# half trusted (mean AUC 0.590 over the 24 cells, against 0.585 with three quarters and 0.569 with a
# quarter), then G off the update (ahead or level in all 24 cells at equal cost: 0.591 vs 0.584).
DEFAULT_GRADALIGN = "gradalign-memory-r1-zero-t50-u"
# the controls (issue 18) are budgeted too: at equal compute, does alignment add anything beyond
# the trusted data (grpo-trusted, grpo-pooltrusted), or beyond GRESO's zero-variance skip (greso)?
BUDGETED = ("grpo", "dapo", "greso", "grpo-trusted", "grpo-pooltrusted", "grpo-t50")
# steps a budgeted baseline may take, as a multiple of the longest selection run's steps
STEP_ALLOWANCE = 40

_FIXED = {
    "gradalign-round": ["gradalign.method=gradalign", "gradalign.schedule=round"],
    "grpo": ["gradalign.enabled=false"],
    "dapo": ["gradalign.method=dapo", "gradalign.schedule=step"],
    # GRESO's skip as the memory sampler's first default had it (+0.5 skip probability per
    # consecutive zero-variance visit, capped at 0.9); no G, so no preference and no skip by alignment
    "greso": ["gradalign.enabled=false", "+grpo.sampler=greso", "+gradalign.memory.zero_skip_step=0.5"],
    "grpo-trusted": ["gradalign.enabled=false", "+grpo.train_on=trusted"],
    "grpo-pooltrusted": ["gradalign.enabled=false", "+grpo.train_on=pool+trusted"],
    # half of each batch from the trusted set as the default GradAlign draws it, the pool's half drawn
    # as plain GRPO draws it, no G: the control for what alignment adds to that mix
    "grpo-t50": ["gradalign.enabled=false", "+grpo.trusted_share=0.5"],
}
_STEP = re.compile(r"(gradalign|simacc)-step(?:-r(\d+))?")
_MEMORY = re.compile(r"(gradalign|simacc)-memory(?:-r(\d+))?(-zero)?(?:-t(\d+))?(-u)?")
# -zero: zero-gradient visits count as an alignment of 0 and are skipped as GRESO skips them (issue 29);
# -u: G for the next step is copied off the update's trusted groups instead of a pass of its own
ZERO_VISITS = ["+gradalign.memory.zero_gradient_scores_zero=true", "+gradalign.memory.zero_skip_step=0.5"]
# GradAlign-memory rebuilds G every 4 steps unless named -r<N>: the round schedule's cadence
# (a round of 4 steps, one G), so the two pay the same for G; chosen before any measurement.
MEMORY_REFRESH = 4


def method_overrides(name: str) -> list[str]:
    """Recipe overrides for a demo method name; a clear error names the choices."""
    if name == "gradalign":
        return method_overrides(DEFAULT_GRADALIGN)
    if name in _FIXED:
        return list(_FIXED[name])
    if name in ("random", "accgreedy", "accfilter"):  # the paper's baselines, in the recipe's schedule
        return [f"gradalign.method={name}"]
    memory = _MEMORY.fullmatch(name)
    if memory:  # simacc-*: the official cos · 4a(1−a) in place of the cosine
        return [f"gradalign.method={memory.group(1)}", "gradalign.schedule=memory",
                f"gradalign.refresh_every={memory.group(2) or MEMORY_REFRESH}", *(ZERO_VISITS if memory.group(3) else []),
                *([f"+gradalign.validation.train_share={int(memory.group(4)) / 100}"] if memory.group(4) else []),
                *(["+gradalign.validation.g_from_update=true"] if memory.group(5) else [])]
    step = _STEP.fullmatch(name)
    if step:
        refresh = [f"gradalign.refresh_every={step.group(2)}"] if step.group(2) else []
        return [f"gradalign.method={step.group(1)}", "gradalign.schedule=step", *refresh]
    raise ValueError(f"unknown demo method {name!r}: choose gradalign, gradalign-round, gradalign-step, "
                     "gradalign-step-r<N> (validation gradient rebuilt every N steps), gradalign-memory, "
                     "gradalign-memory-r<N>, gradalign-memory[-r<N>][-zero][-t<P>[-u]] (P% of each batch from the trusted set, "
                     "which builds G; -u: G copied off the update), simacc-memory[-r<N>][-zero][-t<P>[-u]], simacc-step[-r<N>], grpo, dapo, greso, grpo-trusted, grpo-pooltrusted, grpo-t50, "
                     "random, accgreedy, accfilter")


def is_budgeted(name: str) -> bool:
    return name in BUDGETED
