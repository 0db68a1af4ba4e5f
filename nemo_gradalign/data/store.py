"""Problems as Hugging Face ``datasets``: the shipped task family is stored this way, and the same
loader reads a user's JSONL, parquet, a ``save_to_disk`` folder or a hub name.

Columns: ``op`` and ``digits`` (a string such as "3141") are required; ``problem_id`` (default:
the row index), ``key`` (a wrong answer key, "" for none) and the flags ``corrupted``, ``target``,
``wrong_key`` (booleans) are optional. Every record is checked by ``data/schema.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from nemo_gradalign.data.schema import parse_record
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


def from_rows(rows, source: str) -> list[Problem]:
    """Validated problems (data/schema.py); problem ids must be unique, the set non-empty."""
    problems = [parse_record(row, source, i) for i, row in enumerate(rows)]
    return _checked(problems, source)


def _checked(problems: list[Problem], source: str) -> list[Problem]:
    if not problems:
        raise ValueError(f"{source}: no records (an empty set cannot be trained or validated on)")
    seen: dict[int, int] = {}
    for row, p in enumerate(problems):
        if p.problem_id in seen:
            raise ValueError(f"{source} row {row}: problem_id {p.problem_id} repeats row {seen[p.problem_id]}")
        seen[p.problem_id] = row
    return problems


def utf8_text(path: Path) -> str:
    """The file's text; not UTF-8, a ValueError naming the file, the line and the byte offset."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = len((raw[:err.start].decode("utf-8") + "x").splitlines())  # as read_jsonl numbers lines
        raise ValueError(f"{path} line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at byte offset "
                         f"{err.start}: {err.reason})") from None


def read_jsonl(path: Path) -> list[Problem]:
    """JSON lines read as written, so every value keeps its JSON type and errors name the line."""
    problems = []
    for line_no, line in enumerate(utf8_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {line_no}: not JSON ({err.msg})") from None
        problems.append(parse_record(row, str(path), len(problems), line_no))
    return _checked(problems, str(path))


def load_problems(source: str, split: str = "train") -> list[Problem]:
    """Read problems from a save_to_disk folder, .jsonl/.json, .parquet, or a hub dataset name."""
    import datasets

    path = Path(source).expanduser()
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            raise ValueError(f"cannot read problems from {source!r}: the folder is not a dataset (save_to_disk); "
                             "use a dataset folder, .jsonl, .json or .parquet") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{source}: no split {split!r} (has {sorted(ds)})")
            ds = ds[split]
    elif path.suffix == ".jsonl" and path.is_file():
        return read_jsonl(path)
    elif path.suffix in (".json", ".parquet") and path.is_file():
        if path.stat().st_size == 0:
            raise ValueError(f"{source}: no records (the file is empty)")
        if path.suffix == ".json":
            utf8_text(path)  # datasets' own error names neither the file nor the line
        ds = datasets.load_dataset(path.suffix.lstrip("."), data_files=str(path),
                                   split="train")
    elif path.exists() or path.suffix or _looks_local(source):
        what = "no such file or folder" if not path.exists() else "use a folder, .jsonl, .json or .parquet"
        raise ValueError(f"cannot read problems from {source!r}: {what}")
    else:
        try:
            ds = datasets.load_dataset(source, split=split)
        except Exception as err:  # the hub's many failures (not found, offline, gated): one line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"cannot read problems from {source!r}: no such file or folder here, and not "
                             f"loadable as a hub dataset ({first})") from None
    return from_rows(ds, source)


def _looks_local(source: str) -> bool:
    """A path, not a hub name ("org/name"): absolute, or starting with ./, ../ or ~."""
    return source.startswith(("/", "./", "../", "~")) or source in (".", "..")


def export_sets(sets, out_dir: str) -> Path:
    """Write a regime's sets as one DatasetDict (splits warmup/pool/validation/evaluation)."""
    import datasets

    out = Path(out_dir)
    datasets.DatasetDict({name: to_dataset(getattr(sets, name))
                          for name in ("warmup", "pool", "validation", "evaluation")}).save_to_disk(str(out))
    return out
