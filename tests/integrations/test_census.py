"""The census of upstream's GRPO recipes in docs/nemo_rl.md matches what the flag does on the NeMo RL
checkout at NEMO_RL_ROOT: every recipe the docs call accepted (by the flag, and with gradalign.steer=false)
is accepted, every refused one refused (with upstream's own loader; skipped without a checkout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nemo_gradalign.integrations.nemo_rl.census import census, documented

DOCS = Path(__file__).parents[2] / "docs" / "nemo_rl.md"


def test_the_documented_census_is_what_the_flag_does_on_the_checkout():
    root = Path(os.environ.get("NEMO_RL_ROOT", "/opt/nemo-rl"))
    if not (root / "examples" / "configs").is_dir():
        pytest.skip(f"no NeMo RL checkout at {root} (set NEMO_RL_ROOT)")
    pytest.importorskip("nemo_rl.utils.config", reason="NeMo RL not importable")
    docs = documented(DOCS.read_text())
    found = {v.recipe: v for v in census(root)}
    common = docs.keys() & found.keys()
    if len(common) < 0.9 * len(docs) or len(common) < 0.9 * len(found):
        pytest.skip(f"the docs' census is of another NeMo RL version: {len(common)} recipes in common of the docs' "
                    f"{len(docs)} and the checkout's {len(found)}")
    wrong = {name: (docs[name], found[name].refusals, found[name].mix_refusals) for name in common
             if docs[name] != (found[name].accepted, not found[name].mix_refusals)}
    assert not wrong, f"docs/nemo_rl.md's census (accepted?) disagrees with the checkout: {wrong}"
    for verdict in found.values():  # every refusal says why
        assert verdict.accepted or all("=" in line for line in verdict.refusals), verdict
