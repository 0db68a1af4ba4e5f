"""Which of upstream NeMo RL's GRPO recipes the flag accepts, and how it would read them.

    python -m nemo_gradalign.integrations.nemo_rl.census --root <nemo-rl checkout> [--docs docs/nemo_rl.md]

Every YAML under the checkout's ``examples/configs`` with a ``grpo:`` section (distillation ones
left out) is loaded with upstream's own ``load_config`` (its ``defaults:`` chains), given our
default block and ``gradalign.enabled=true``, resolved with upstream's resolvers, and run through
the same checks the entry runs before upstream's script starts (``preflight``). Per recipe: the
backend, sync or async, accepted or each refusal, the schedule, and whether the trained groups'
alignment is read in the training pass or with a separate pass (from the recipe alone; the workers
also check the model itself: dropout, a loss scale, multi-token prediction). ``--docs`` rewrites
the table between this module's markers in the given file; tests/integrations/test_census.py
fails when the checkout's verdicts differ from the file's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nemo_gradalign.config import ConfigError
from nemo_gradalign.integrations.nemo_rl.config import IN_PASS_LOSS_REFUSALS, lookup, read_gradalign
from nemo_gradalign.integrations.nemo_rl.nemo_gym import is_nemo_gym
from nemo_gradalign.integrations.nemo_rl.preflight import preflight, with_default_block

BEGIN, END = "[//]: # (census begin)", "[//]: # (census end)"  # markdown that renders as nothing


@dataclass(frozen=True)
class Verdict:
    recipe: str          # path under examples/configs
    backend: str         # megatron | dtensor
    asynchronous: bool
    refusals: tuple[str, ...]  # empty: accepted
    mix_refusals: tuple[str, ...]  # with gradalign.steer=false (the trusted mix alone)
    schedule: str
    read: str            # "in pass", "separate pass: <why>", or "–" when refused
    named: tuple[bool, bool] | None = None  # NeMo-Gym: (steered, mix) accepted once a trusted set is named

    @property
    def accepted(self) -> bool:
        return not self.refusals


def grpo_recipe_paths(root: Path) -> list[Path]:
    configs = root / "examples" / "configs"
    return sorted(p for p in configs.rglob("*.yaml") if "distillation" not in p.name)


def _field(line: str) -> str:
    """The field a refusal line names (its text before ``=``)."""
    return line.split("=", 1)[0].strip()


def static_read_reasons(recipe: dict) -> list[str]:
    """Why the trained groups cannot be read in the pass, from the recipe alone (empty: they can)."""
    reasons = []
    cfg = read_gradalign(recipe)
    if cfg.in_pass == "off":
        reasons.append("gradalign.in_pass=off")
    for key, default, _ in IN_PASS_LOSS_REFUSALS:
        value = lookup(recipe, f"loss_fn.{key}", default)
        if value not in (default, None, 0, 0.0, False):
            reasons.append("KL penalty" if key == "reference_policy_kl_penalty" else f"loss_fn.{key}")
    mc = "policy.megatron_cfg"
    if lookup(recipe, "data_plane.enabled", False):  # the entry scores data-plane steps with a separate pass
        reasons.append("the data plane")
    for section in ("sequence_packing", "dynamic_batching"):
        if lookup(recipe, f"policy.{section}.enabled", False):
            reasons.append(section.replace("_", " "))
    # Megatron-Bridge builds Transformer Engine layers unless transformer_impl is "local"; the
    # per-problem hooks read megatron-core's own layers only (the worker refuses TE when armed)
    if lookup(recipe, f"{mc}.transformer_impl", "transformer_engine") != "local":
        reasons.append("Transformer Engine layers")
    for key in ("context_parallel_size", "expert_model_parallel_size", "virtual_pipeline_model_parallel_size"):
        if int(lookup(recipe, f"{mc}.{key}", 1) or 1) > 1:
            reasons.append(key.removesuffix("_size").replace("_", " "))
    group = int(lookup(recipe, "grpo.num_generations_per_prompt"))
    micro = int(lookup(recipe, "policy.train_micro_batch_size"))
    if micro % group and cfg.in_pass_projection is None:  # else read with projected norms
        reasons.append(f"microbatch {micro} < group {group}" if micro < group else f"microbatch {micro} splits groups")
    prompts, batch = int(lookup(recipe, "grpo.num_prompts_per_step")), int(lookup(recipe, "policy.train_global_batch_size"))
    if (prompts * group) % batch or batch % group:  # several steps per train() are read, each at its weights
        reasons.append(f"policy.train_global_batch_size={batch} splits the step's rows or its groups")
    return reasons


NOT_GRPO = ("distillation", "sft", "dpo", "rm", "ppo")  # top-level sections of other algorithms


def verdict(root: Path, path: Path) -> Verdict | None:
    """The flag's verdict on one recipe; None when it is not a GRPO recipe."""
    from omegaconf import OmegaConf
    from nemo_rl.utils import config as upstream

    upstream.register_omegaconf_resolvers()
    name = str(path.relative_to(root / "examples" / "configs"))
    config = with_default_block(upstream.load_config)(str(path))
    if "grpo" not in config or any(key in config for key in NOT_GRPO):
        return None
    OmegaConf.update(config, "gradalign.enabled", True, force_add=True)
    recipe = OmegaConf.to_container(config, resolve=True)
    backend = "megatron" if lookup(recipe, "policy.megatron_cfg.enabled", False) else "dtensor"
    asynchronous = bool(lookup(recipe, "grpo.async_grpo.enabled", False))
    refusals = _refusals(recipe)
    OmegaConf.update(config, "gradalign.steer", False)
    mix_refusals = _refusals(OmegaConf.to_container(config, resolve=True))
    schedule = read_gradalign(recipe).schedule
    why = static_read_reasons(recipe)
    read = "–" if refusals else ("separate pass: " + ", ".join(why) if why else "in pass")
    named = None
    if is_nemo_gym(recipe):  # the flag alone has no trusted rows there (nemo_gym.py): with some named
        OmegaConf.update(config, "gradalign.validation.dataset", "/trusted/nemo_gym_rows.jsonl", force_add=True)
        accepted = []
        for steer in (True, False):
            OmegaConf.update(config, "gradalign.steer", steer)
            accepted.append(not _refusals(OmegaConf.to_container(config, resolve=True)))
        named = tuple(accepted)
    return Verdict(name, backend, asynchronous, refusals, mix_refusals, schedule, read, named)


def _refusals(recipe: dict) -> tuple[str, ...]:
    """What the entry's checks refuse in ``recipe`` (one line each; empty: accepted)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # preflight's "set ..." line
            preflight(recipe)
        return ()
    except (ConfigError, ValueError) as err:
        lines = str(err).splitlines()
        return tuple(line.strip() for line in (lines[1:] or lines))


def census(root: Path) -> list[Verdict]:
    os.environ.setdefault("HF_HOME", "$HF_HOME")  # some recipes read it through ${oc.env:HF_HOME}
    return [v for v in (verdict(root, path) for path in grpo_recipe_paths(root)) if v is not None]


def summary(verdicts: list[Verdict]) -> list[str]:
    lines = []
    for backend in ("megatron", "dtensor"):
        for asynchronous in (False, True):
            these = [v for v in verdicts if v.backend == backend and v.asynchronous == asynchronous]
            if these:
                kind = f"{'async' if asynchronous else 'synchronous'} {backend}"
                read = sum(v.read == "in pass" for v in these)
                gym = [v.named for v in these if v.named is not None]
                lines.append(f"- {kind}: {sum(v.accepted for v in these)} of {len(these)} accepted, "
                             f"{read} read in the pass; with `gradalign.steer=false` (the trusted mix) "
                             f"{sum(not v.mix_refusals for v in these)} accepted" + (
                                 f"; of its {len(gym)} NeMo-Gym recipes, once `gradalign.validation.dataset` names "
                                 f"NeMo-Gym rows, {sum(g[0] for g in gym)} accepted ({sum(g[1] for g in gym)} with "
                                 "`gradalign.steer=false`)" if gym else ""))
    sync = [v for v in verdicts if v.backend == "megatron" and not v.asynchronous]
    fields: dict[str, list[int]] = {}
    for v in sync:
        named = {_field(r) for r in v.refusals}
        for field in named:
            fields.setdefault(field, [0, 0])[0] += 1
            fields[field][1] += len(named) == 1
    lines += ["", "What refuses the synchronous Megatron recipes (recipes; as the sole reason):", ""]
    lines += [f"- `{f}`: {n} ({alone})" for f, (n, alone) in sorted(fields.items(), key=lambda kv: -kv[1][0])]
    reads: dict[str, int] = {}
    for v in sync:
        if v.accepted and v.read != "in pass":
            for key in v.read.removeprefix("separate pass: ").split(", "):
                key = re.sub(r"\d+", "N", key)
                reads[key] = reads.get(key, 0) + 1
    lines += ["", "Why an accepted one is read with a separate pass (recipes each reason applies to):", ""]
    lines += [f"- {k}: {n}" for k, n in sorted(reads.items(), key=lambda kv: -kv[1])]
    return lines


def table(verdicts: list[Verdict]) -> str:
    rows = ["| recipe | backend | async | verdict | schedule | read | steer=false |", "|---|---|---|---|---|---|---|"]
    for v in verdicts:
        why, mix = ("accepted" if not refused else "refused: " + "; ".join(sorted({_field(r) for r in refused}))
                    for refused in (v.refusals, v.mix_refusals))
        rows.append(f"| `{v.recipe}` | {v.backend} | {'yes' if v.asynchronous else 'no'} | {why} | "
                    f"{v.schedule if v.accepted else '–'} | {v.read} | {mix} |")
    return "\n".join([*summary(verdicts), "", *rows])


def documented(text: str) -> dict[str, tuple[bool, bool]]:
    """recipe -> (accepted, accepted with steer=false), from the table between a docs file's markers."""
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    found = re.finditer(r"^\| `([^`]+)` \|[^|]*\|[^|]*\| (accepted|refused)[^|]*\|[^|]*\|[^|]*\| (accepted|refused)",
                        body, re.M)
    return {m.group(1): (m.group(2) == "accepted", m.group(3) == "accepted") for m in found}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="a NeMo RL checkout")
    parser.add_argument("--docs", type=Path, help="rewrite the table between the census markers of this file")
    args = parser.parse_args(argv)
    text = table(census(args.root))
    if args.docs:
        old = args.docs.read_text()
        head, rest = old.split(BEGIN, 1)
        args.docs.write_text(f"{head}{BEGIN}\n\n{text}\n\n{END}{rest.split(END, 1)[1]}")
    print(text)


if __name__ == "__main__":
    main()
