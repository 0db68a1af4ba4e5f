"""A content fingerprint of each set a run selects from, validates and evaluates on, stored in every
checkpoint: a file rewritten in place (same path, other problems) changes the run as surely as a
changed recipe, so a resume compares contents, not paths."""

from __future__ import annotations

import hashlib
import json

from nemo_gradalign.data.tasks import Problem

FILE = "data.json"  # in each checkpoint folder, next to training_info.json


def sources(recipe) -> dict[str, tuple[str, str | None]]:
    """set name -> (the recipe field naming its file, the file; None: generated from the recipe)."""
    d, v = recipe.data, recipe.gradalign.validation
    validation = ("gradalign.validation.dataset", v.dataset) if v.dataset else ("data.validation_source",
                                                                                d.validation_source)
    return {"pool": ("data.pool_source", d.pool_source), "validation": validation,
            "evaluation": ("data.eval_source", d.eval_source)}


def content_hash(problems: list[Problem]) -> str:
    rows = [[p.problem_id, p.op, list(p.digits), p.key, sorted((k, bool(v)) for k, v in p.tags.items())]
            for p in problems]
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def fingerprints(recipe, sets) -> dict[str, dict]:
    out = {}
    for name, (field, source) in sources(recipe).items():
        problems = getattr(sets, name)
        out[name] = {"field": field, "source": source, "problems": len(problems), "sha256": content_hash(problems)}
    return out


def changes(saved: dict, now: dict, notes: dict[str, str] | None = None) -> list[str]:
    """One line per set whose content differs, naming its file (or that it is generated), ending
    with ``notes[set]`` where given."""
    lines = []
    for name, new in now.items():
        old = saved.get(name)
        if old is None or old.get("sha256") == new["sha256"]:
            continue
        where = f"{new['field']}={new['source']}" if new["source"] else f"{name} set (generated from data.*)"
        lines.append(f"{where}: its content changed ({old.get('problems')} problems, sha256 "
                     f"{str(old.get('sha256'))[:12]} in the checkpoint; {new['problems']} problems, sha256 "
                     f"{new['sha256'][:12]} now){(notes or {}).get(name, '')}")
    return lines
