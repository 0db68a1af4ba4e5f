"""One problem record as stored (JSONL, parquet, a ``save_to_disk`` folder), checked field by field.

Loose coercion silently misreads data: the string "false" is truthy, an integer ``digits`` loses
its leading zeros, a key of the wrong length is never matched so nothing is ever rewarded. Every
record is validated strictly and an error names the file, the row and the field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator

from nemo_gradalign.data import tasks


class ProblemRecord(BaseModel):
    """Columns: ``op`` and ``digits`` required; ``problem_id``, ``key`` and the flags optional."""

    model_config = ConfigDict(extra="forbid", strict=True)

    op: StrictStr
    digits: StrictStr = Field(description="a string, so leading zeros survive")
    problem_id: StrictInt | None = Field(None, ge=0)
    key: StrictStr | None = Field(None, description="a wrong answer key; empty or absent: the true answer")
    corrupted: StrictBool | None = None
    target: StrictBool | None = None
    wrong_key: StrictBool | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if not (self.digits.isascii() and self.digits.isdigit()
                and tasks.MIN_LEN <= len(self.digits) <= tasks.MAX_LEN):
            raise ValueError(f"digits: {self.digits!r} must be {tasks.MIN_LEN} to {tasks.MAX_LEN} "
                             "characters 0-9")
        if self.op not in tasks.OPS:
            raise ValueError(f"op: unknown op {self.op!r}; choose from {sorted(tasks.OPS)}")
        if self.key:
            if not (self.key.isascii() and self.key.isdigit()) or len(self.key) != len(self.digits):
                raise ValueError(f"key: {self.key!r} must be {len(self.digits)} digits, as many as "
                                 f"digits {self.digits!r} (otherwise no answer can ever match it)")
        elif self.wrong_key:
            raise ValueError("wrong_key: true, but the record has no key")
        return self

    def problem(self, row: int) -> tasks.Problem:
        flags = {f: True for f in ("corrupted", "target", "wrong_key") if getattr(self, f)}
        return tasks.Problem(row if self.problem_id is None else self.problem_id, self.op,
                             [int(c) for c in self.digits], tags=flags,
                             key=[int(c) for c in self.key] if self.key else None)


def _explain(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        given = e.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r}, a {type(given).__name__})"
        if field == "digits" and isinstance(given, int) and not isinstance(given, bool):
            shown += "; write digits as a string: an integer loses leading zeros"
        parts.append(f"field {field}: {msg}{shown}" if field else msg)
    return "; ".join(parts)


def parse_record(row, source: str, index: int, line: int | None = None) -> tasks.Problem:
    """A validated Problem, or a ValueError naming source, row (and line) and field."""
    where = f"{source} row {index}" + (f" (line {line})" if line is not None else "")
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with op and digits, got {row!r:.80}")
    row = {k: v for k, v in row.items() if not (k == "key" and v == "")}
    try:
        return ProblemRecord.model_validate(row).problem(index)
    except ValidationError as err:
        raise ValueError(f"{where}: {_explain(err)}") from None
