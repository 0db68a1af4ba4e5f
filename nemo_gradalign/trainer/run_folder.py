"""A run folder (``logger.log_dir`` and ``checkpointing.checkpoint_dir``) belongs to one run.

Mixing runs in one folder loses data silently: a new run's checkpoints are pruned against an old
run's higher step, and a later resume loads the old weights under the new metrics. So, before any
work: a new run refuses a folder holding another run's metrics or checkpoints (``--overwrite``
clears them); ``--resume`` with nothing to resume says so and writes nothing; ``--resume`` refuses
a recipe or rank count that differs from the checkpoint's, data whose content differs
(``--allow-data-change`` accepts it) and a metrics.jsonl that disagrees with the checkpoint
(trainer/resume_checks.py); a folder inside another run's, or holding one, is refused by real path
(trainer/folder_nesting.py); and a lock, held by the spawned ranks too, stops a second process
for as long as any process of the run can still write.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml

from nemo_gradalign.config import ConfigError
from nemo_gradalign.megatron.parallel import HeldFile
from nemo_gradalign.paths import check_writable_folder, make_folder
from nemo_gradalign.trainer import data_fingerprint
from nemo_gradalign.trainer.checkpoint import CheckpointManager, read_info
from nemo_gradalign.trainer.checkpoint_files import check_resumable
from nemo_gradalign.trainer.folder_nesting import nesting_problems
from nemo_gradalign.trainer.resume_checks import check_data, check_metrics

# What may differ between a checkpoint's recipe and the one it is resumed with: how long to train,
# and where and how often to log and save. Anything else changes the run.
MAY_CHANGE = ("grpo.max_num_steps", "logger.", "checkpointing.")
# Where the data files are may change too when the checkpoint fingerprints their content.
DATA_PATHS = ("data.pool_source", "data.validation_source", "data.eval_source", "gradalign.validation.dataset")


class RunFolderError(ConfigError):
    """The folder belongs to another run, holds nothing to resume, or is in use."""


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def recipe_changes(saved: dict, requested: dict, may_change: tuple[str, ...] = MAY_CHANGE) -> list[str]:
    """``key: old -> new`` for every leaf that differs, except those that may change on resume."""
    old, new = _flatten(saved), _flatten(requested)
    missing = object()
    changes = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b and not any(key == m or (m.endswith(".") and key.startswith(m)) for m in may_change):
            show = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
            changes.append(f"{key}: {show(a)} in the checkpoint, {show(b)} now")
    return changes


class RunFolder:
    def __init__(self, log_dir: str, checkpoint_dir: str):
        self.log_dir = Path(log_dir)
        self.metrics = self.log_dir / "metrics.jsonl"
        self.checkpoints = CheckpointManager(checkpoint_dir, 1, "")
        self.fields = {"logger.log_dir": log_dir, "checkpointing.checkpoint_dir": checkpoint_dir}
        self.held: list[HeldFile] = []  # the locks, for the ranks to hold too (claim)

    @classmethod
    def of(cls, recipe) -> RunFolder:
        return cls(recipe.logger.log_dir, recipe.checkpointing.checkpoint_dir)

    def _held(self) -> list[str]:
        """What another run left here, in words (empty: the folder is free)."""
        held = []
        if self.metrics.exists() and self.metrics.stat().st_size:
            lines = sum(1 for line in self.metrics.read_text().splitlines() if line.strip())
            held.append(f"{self.metrics} ({lines} records)")
        found = [p.name for _, p in self.checkpoints.checkpoints()] + [p.name for p in self.checkpoints.incomplete()]
        if found:
            held.append(f"{self.checkpoints.root}: {', '.join(found)}")
        return held

    def check(self, recipe: dict, world: int, resume: bool, overwrite: bool, data: dict | None = None,
              allow_data_change: bool = False, new_schedule=None, warn: bool = True) -> Path | None:
        """Read-only: the checkpoint to resume from, None for a fresh run, or a RunFolderError.
        ``data``: the sets' fingerprints now (trainer/data_fingerprint.py), compared on resume;
        ``new_schedule``: makes the schedule the checkpoint's state is test-loaded into
        (trainer/checkpoint_files.py; None: files are not read before the ranks load them)."""
        if resume and overwrite:
            raise RunFolderError("--resume and --overwrite contradict each other; choose one")
        for field, path in self.fields.items():
            check_writable_folder(path, field)
        if resume and self.checkpoints.latest() is None:  # first: a mistyped folder is not another run's
            raise self._nothing_to_resume()
        nested = nesting_problems(self.fields)
        if nested:
            raise RunFolderError(f"{nested[0]}: two runs in one folder mix their files; choose a folder "
                                 "outside any other run's")
        if resume:
            latest, warnings = self._resumable(recipe, world, data, allow_data_change, new_schedule)
            for line in warnings if warn else []:
                print(f"warning: {line}", file=sys.stderr)
            return latest
        held = self._held()
        if held and not overwrite:
            raise RunFolderError(
                f"logger.log_dir {self.log_dir} holds another run: {'; '.join(held)}. Continue it with "
                "--resume, replace it with --overwrite, or choose another logger.log_dir")
        return None

    def _resumable(self, recipe: dict, world: int, data: dict | None, allow_data_change: bool,
                   new_schedule=None) -> tuple[Path, list[str]]:
        latest = self.checkpoints.latest()
        config = latest / "config.yaml"
        saved = yaml.safe_load(config.read_text()) if config.is_file() else None
        if not isinstance(saved, dict):
            raise RunFolderError(f"--resume: {config} is missing, so the recipe cannot be compared")
        fingerprinted = data is not None and (latest / data_fingerprint.FILE).is_file()
        changes = recipe_changes(saved, recipe, MAY_CHANGE + (DATA_PATHS if fingerprinted else ()))
        if changes:
            raise RunFolderError(
                f"--resume: the recipe differs from the one {latest} was trained with:\n  " + "\n  ".join(changes)
                + "\nOnly grpo.max_num_steps, logger.*, checkpointing.* and where the data files are (their "
                "content is compared) may change on resume; "
                "start a new run (another logger.log_dir) to change the others")
        step, steps = read_info(latest)["step"], recipe["grpo"]["max_num_steps"]
        if steps < step:
            raise RunFolderError(f"--resume: grpo.max_num_steps={steps} is below the checkpoint's step {step}")
        saved_world = len(list((latest / "trainer").glob("rank_*.pt")))
        if saved_world != world:
            raise RunFolderError(f"--resume: {latest} was written by {saved_world} ranks, this run has "
                                 f"{world}; resume with the same TP x PP x DP (--ranks, srun tasks)")
        warnings = check_metrics(self.metrics, latest)
        remap = check_resumable([p for _, p in self.checkpoints.checkpoints()], new_schedule) if new_schedule else None
        moved = remap is not None and not remap.identical
        note = {"pool": f"; the score memory follows problems by content: {remap.summary()}"} if moved else {}
        changed = check_data(latest, data, allow_data_change, note)
        if moved and not any(note["pool"] in line for line in changed):
            changed.append(f"the score memory's problems moved{note['pool']}")
        return latest, warnings + changed

    def _nothing_to_resume(self) -> RunFolderError:
        what = "; ".join(self._held()) or "nothing"
        elsewhere = [p for p in sorted(self.log_dir.glob("*")) + sorted(self.log_dir.glob("*/*"))
                     if p.is_dir() and p.resolve() != self.checkpoints.root.resolve()
                     and CheckpointManager(str(p), 1, "").latest() is not None] if self.log_dir.is_dir() else []
        hint = (f"; but {elsewhere[0]} in logger.log_dir holds checkpoints: is checkpointing.checkpoint_dir="
                f"{self.fields['checkpointing.checkpoint_dir']} mistyped?" if elsewhere else "")
        return RunFolderError(f"--resume: nothing to resume: checkpointing.checkpoint_dir {self.checkpoints.root} "
                              f"holds no complete checkpoint (found: {what}){hint}. Start without --resume (with "
                              "--overwrite if the folder holds an earlier attempt)")

    def clear(self) -> None:
        """--overwrite: remove the other run's metrics and checkpoints (nothing else in the folder)."""
        for _, path in self.checkpoints.checkpoints():
            shutil.rmtree(path)
        for path in self.checkpoints.incomplete():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.metrics.unlink(missing_ok=True)

    @contextmanager
    def claim(self, recipe: dict, world: int, resume: bool, overwrite: bool, data: dict | None = None,
              allow_data_change: bool = False, new_schedule=None):
        """Check (a refused run writes nothing), lock, check again under the lock, clear on
        --overwrite; the lock is held until the block ends and the last process holding
        ``self.held`` (the spawned ranks) has died."""
        self.check(recipe, world, resume, overwrite, data, allow_data_change, new_schedule, warn=False)
        with ExitStack() as stack:
            folders = {Path(path).resolve(): field for field, path in self.fields.items()}
            self.held = [HeldFile(stack.enter_context(_lock(folder, field))) for folder, field in folders.items()]
            latest = self.check(recipe, world, resume, overwrite, data, allow_data_change, new_schedule)
            if overwrite:
                self.clear()
            yield latest


@contextmanager
def _lock(folder: Path, field: str):
    """Yields the locked descriptor; closing it here releases the lock only when no spawned rank
    holds the same open file any more (flock belongs to the open file, not the process)."""
    make_folder(folder, field)
    path = folder / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise RunFolderError(f"{folder} is in use by another training process (pid {owner}); wait for "
                                 "it (and the ranks it started) to finish or choose another logger.log_dir"
                                 ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield handle.fileno()
