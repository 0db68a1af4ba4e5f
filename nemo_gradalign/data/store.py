"""Problems as Hugging Face ``datasets``: the shipped task family is stored this way, and the same
loader reads a user's JSONL, parquet, a ``save_to_disk`` folder or a hub name.

Columns: ``op`` and ``digits`` (a string such as "3141") are required; ``problem_id`` (default:
the row index), ``key`` (a wrong answer key, "" for none) and the flags ``corrupted``, ``target``,
``wrong_key`` are optional.
"""

from __future__ import annotations

from pathlib import Path

from nemo_gradalign.data.tasks import Problem

FLAGS = ("corrupted", "target", "wrong_key")


def to_dataset(problems: list[Problem]):
    import datasets

    return datasets.Dataset.from_dict({
        "problem_id": [p.problem_id for p in problems],
        "op": [p.op for p in problems],
        "digits": ["".join(map(str, p.digits)) for p in problems],
        "key": ["".join(map(str, p.key)) if p.key is not None else "" for p in problems],
        **{flag: [bool(p.tags.get(flag)) for p in problems] for flag in FLAGS},
    })


def _digits(text, where: str) -> list[int]:
    text = str(text)
    if not text.isdigit():
        raise ValueError(f"{where}: expected a string of digits, got {text!r}")
    return [int(c) for c in text]


def from_rows(rows, source: str) -> list[Problem]:
    problems = []
    for i, row in enumerate(rows):
        where = f"{source} row {i}"
        for column in ("op", "digits"):
            if row.get(column) in (None, ""):
                raise ValueError(f"{where}: missing required column {column!r}")
        key = row.get("key") or None
        try:
            problem = Problem(int(row.get("problem_id", i) if row.get("problem_id") is not None else i),
                              str(row["op"]), _digits(row["digits"], f"{where} column 'digits'"),
                              tags={f: True for f in FLAGS if row.get(f)},
                              key=_digits(key, f"{where} column 'key'") if key else None)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        problems.append(problem)
    ids = [p.problem_id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: problem_id values are not unique")
    return problems


def load_problems(source: str, split: str = "train") -> list[Problem]:
    """Read problems from a save_to_disk folder, .jsonl/.json, .parquet, or a hub dataset name."""
    import datasets

    path = Path(source)
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    elif path.suffix in (".jsonl", ".json"):
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
    elif path.suffix == ".parquet":
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    elif path.exists() or path.suffix:
        raise ValueError(f"cannot read problems from {source!r}: use a folder, .jsonl, .json or .parquet")
    else:
        ds = datasets.load_dataset(source, split=split)
    return from_rows(ds, source)


def export_sets(sets, out_dir: str) -> Path:
    """Write a regime's sets as one DatasetDict (splits warmup/pool/validation/evaluation)."""
    import datasets

    out = Path(out_dir)
    datasets.DatasetDict({name: to_dataset(getattr(sets, name))
                          for name in ("warmup", "pool", "validation", "evaluation")}).save_to_disk(str(out))
    return out
