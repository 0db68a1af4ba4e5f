"""What the run remembers about each training problem, so the sampler can pick before rollout.

One row per dataset index (0..n-1), held in flat numpy arrays: 44 bytes a problem, 44 MB for a
1M-problem dataset, whatever the run length (no per-visit history is kept).

A visit either has a gradient (its cosine with the validation gradient G is recorded) or its
gradient was exactly zero (all rollouts got the same reward; no cosine exists). Cosines are
summarised by a weighted Welford mean and spread. When G is rebuilt (a new *generation*), older
cosines were measured against another G and another policy, so they may count less: a weight
is ``generation_decay ** (generations since it was measured)``. 1 keeps every visit at full
weight (default), 0 forgets everything older than the current G, 0.5 halves per rebuild. Aging
is applied lazily: a row's weight and M2 are scaled when it gets a new cosine, and
``aged_weight_and_m2`` ages them to the newest generation for decisions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

STATE_VERSION = 1
COSINE_SLACK = 1e-6  # a float cosine may exceed 1 by rounding; beyond this it is a caller's bug

# name -> dtype; the order is the order of the state dict
FIELDS: dict[str, np.dtype] = {
    "visits": np.dtype(np.int32),       # every recorded visit
    "scored": np.dtype(np.int32),       # visits that had a gradient (a cosine)
    "last_step": np.dtype(np.int32),    # step of the latest visit, -1 never visited
    "zero_streak": np.dtype(np.int32),  # consecutive latest visits whose gradient was zero
    "generation": np.dtype(np.int32),   # G generation of the latest cosine, -1 none
    "weight": np.dtype(np.float64),     # W: sum of cosine weights (as of `generation`)
    "mean": np.dtype(np.float64),       # weighted mean cosine
    "m2": np.dtype(np.float64),         # weighted sum of squared deviations from the mean
}
_UNSET = {"last_step": -1, "generation": -1}


class ScoreMemory:
    def __init__(self, num_problems: int, generation_decay: float = 1.0):
        if not isinstance(num_problems, int) or num_problems < 1:
            raise ValueError(f"ScoreMemory: num_problems must be a positive int, got {num_problems!r}")
        if not 0.0 <= generation_decay <= 1.0:
            raise ValueError(f"ScoreMemory: generation_decay must be in [0, 1], got {generation_decay!r}")
        self.num_problems, self.generation_decay = num_problems, float(generation_decay)
        self.latest_generation = -1
        for name, dtype in FIELDS.items():
            setattr(self, name, np.full(num_problems, _UNSET.get(name, 0), dtype=dtype))

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in FIELDS)

    def record(self, problem_ids: Sequence[int] | np.ndarray, step: int, generation: int,
               cosine: Sequence[float] | np.ndarray, zero_gradient: Sequence[bool] | np.ndarray,
               zero_scores: bool = False) -> None:
        """One training step's observations. ``cosine[k]`` is cos(g_i, G) of problem
        ``problem_ids[k]``, ignored (may be NaN) where ``zero_gradient[k]``; ``generation`` counts
        G rebuilds (0, 1, 2, ...), never decreasing. ``zero_scores``: a zero-gradient visit is an
        observed alignment of 0 (g_i = 0, so ⟨g_i, G⟩ = 0): it enters the mean, weight and spread
        like a cosine of 0, so a problem the policy has solved stops being a favourite; its zero
        streak grows either way."""
        ids, cos, zero = self._validated(problem_ids, step, generation, cosine, zero_gradient)
        self._count_visits(ids, step, zero)
        if zero_scores:
            cos, zero = np.where(zero, 0.0, cos), np.zeros_like(zero)
        hit = ids[~zero]
        self.scored[hit] += 1
        age = np.where(self.generation[hit] >= 0, generation - self.generation[hit], 0)
        fade = self.generation_decay ** age.astype(np.float64)
        weight = self.weight[hit] * fade + 1.0
        delta = cos[~zero] - self.mean[hit]
        mean = self.mean[hit] + delta / weight
        self.m2[hit] = self.m2[hit] * fade + delta * (cos[~zero] - mean)
        self.mean[hit], self.weight[hit] = mean, weight
        self.generation[hit] = generation
        self.latest_generation = max(self.latest_generation, generation)

    def record_visits(self, problem_ids: Sequence[int] | np.ndarray, step: int,
                      zero_gradient: Sequence[bool] | np.ndarray) -> None:
        """Visits with no cosine (no validation gradient): only the visit counts and zero-gradient
        streaks move, which is all a GRESO-like zero-variance skip reads."""
        ids = np.asarray(problem_ids)
        ids, _, zero = self._validated(ids, step, max(self.latest_generation, 0), np.zeros(ids.shape),
                                       zero_gradient)
        self._count_visits(ids, step, zero)

    def _count_visits(self, ids: np.ndarray, step: int, zero: np.ndarray) -> None:
        self.visits[ids] += 1
        self.last_step[ids] = step
        self.zero_streak[ids[zero]] += 1
        self.zero_streak[ids[~zero]] = 0

    def _validated(self, problem_ids, step, generation, cosine, zero_gradient):
        ids = np.asarray(problem_ids)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"ScoreMemory.record: problem_ids must be a 1-D sequence of ints, got {ids.dtype} "
                             f"shape {ids.shape}")
        ids = ids.astype(np.int64)
        cos = np.asarray(cosine, dtype=np.float64)
        zero = np.asarray(zero_gradient)
        for name, arr in (("cosine", cos), ("zero_gradient", zero)):
            if arr.shape != ids.shape:
                raise ValueError(f"ScoreMemory.record: {name} has shape {arr.shape}, problem_ids {ids.shape}")
        if zero.dtype != np.bool_:
            raise ValueError(f"ScoreMemory.record: zero_gradient must be booleans, got dtype {zero.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_problems):
            bad = int(ids[(ids < 0) | (ids >= self.num_problems)][0])
            raise ValueError(f"ScoreMemory.record: problem id {bad} is outside this dataset's 0..{self.num_problems - 1}")
        if np.unique(ids).size != ids.size:
            raise ValueError("ScoreMemory.record: a problem id appears twice in one step's observations")
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"ScoreMemory.record: step must be a non-negative int, got {step!r}")
        if ids.size and step < self.last_step[ids].max():
            raise ValueError(f"ScoreMemory.record: step {step} is earlier than a recorded visit "
                             f"(step {int(self.last_step[ids].max())}) of one of these problems")
        if not isinstance(generation, (int, np.integer)) or generation < max(self.latest_generation, 0):
            raise ValueError(f"ScoreMemory.record: generation must be an int >= the latest one recorded "
                             f"({max(self.latest_generation, 0)}), got {generation!r}")
        with np.errstate(invalid="ignore"):
            bad = ~zero & ~(np.abs(cos) <= 1.0 + COSINE_SLACK)  # NaN fails the comparison
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(f"ScoreMemory.record: cosine {float(cos[k])} of problem {int(ids[k])} (which has a "
                             f"gradient) is not in [-1, 1]")
        return ids, cos, zero.astype(bool)

    def aged_weight_and_m2(self) -> tuple[np.ndarray, np.ndarray]:
        """W and M2 of every row as seen from the newest generation (0 where never scored)."""
        scored = self.generation >= 0
        age = np.where(scored, self.latest_generation - self.generation, 0).astype(np.float64)
        fade = np.where(scored, self.generation_decay ** age, 0.0)
        return self.weight * fade, self.m2 * fade

    def state_dict(self) -> dict:
        """Plain tensors and ints (loads with torch.load(weights_only=True)); copies, so a
        snapshot never changes when the memory does."""
        state: dict = {"version": STATE_VERSION, "num_problems": self.num_problems,
                       "latest_generation": self.latest_generation}
        for name in FIELDS:
            state[name] = torch.from_numpy(getattr(self, name).copy())
        return state

    def load_state_dict(self, state: dict, source: np.ndarray | None = None) -> None:
        """Restore in place (holders of this object keep seeing the live memory). Everything is
        checked before anything is changed: a damaged or impossible state is refused naming the
        field. ``source[row]``: the saved row of this row's problem, -1 for one the state never
        knew (problem_keys.Remap); None: the same rows in the same order."""
        if not isinstance(state, dict):
            raise ValueError(f"ScoreMemory state must be a dict, got {type(state).__name__}")
        for key in ("version", "num_problems", "latest_generation", *FIELDS):
            if key not in state:
                raise ValueError(f"ScoreMemory state: missing field {key!r}")
        if state["version"] != STATE_VERSION:
            raise ValueError(f"ScoreMemory state: version {state['version']!r} is not supported "
                             f"(this code reads version {STATE_VERSION})")
        saved_n = state["num_problems"]
        if not isinstance(saved_n, int) or saved_n < 1:
            raise ValueError(f"ScoreMemory state: num_problems={saved_n!r} must be a positive int")
        if source is None and saved_n != self.num_problems:
            raise ValueError(f"ScoreMemory state: num_problems={saved_n!r}, but this dataset has "
                             f"{self.num_problems} problems (was the checkpoint saved for another dataset?)")
        arrays = {}
        for name, dtype in FIELDS.items():
            value = state[name]
            array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if array.shape != (saved_n,) or array.dtype != dtype:
                raise ValueError(f"ScoreMemory state: field {name!r} is {array.dtype} of shape {array.shape}, "
                                 f"expected {dtype} of shape ({saved_n},)")
            arrays[name] = array
        generation = state["latest_generation"]
        if not isinstance(generation, int) or generation < max(-1, int(arrays["generation"].max())):
            raise ValueError(f"ScoreMemory state: latest_generation={generation!r} is below a row's generation "
                             f"({int(arrays['generation'].max())})")
        check_consistent(arrays, generation)
        if source is not None:
            arrays = {name: np.where(source >= 0, array[np.maximum(source, 0)], _UNSET.get(name, 0)).astype(array.dtype)
                      for name, array in arrays.items()}
        for name, array in arrays.items():
            getattr(self, name)[:] = array
        self.latest_generation = generation


_EPS = np.finfo(np.float64).eps


def check_consistent(a: dict[str, np.ndarray], latest_generation: int) -> None:
    """What every memory ``record`` can produce, and nothing else; ValueError naming the field,
    the row and the value otherwise. Float bounds: a weighted mean of cosines in [-1-s, 1+s]
    (s = COSINE_SLACK) stays within it up to 4ε per update; W = Σ faded weights + 1 lies in
    [1, scored] exactly (a product with a fade ≤ 1 and a sum of integers' floats never round past
    them); M2 = Σ w (x - m)² ≥ 0 up to 16ε per update, and ≤ W·(1+s)² (a variance on [-1-s, 1+s])."""
    visits, scored, weight, mean, m2 = a["visits"], a["scored"], a["weight"], a["mean"], a["m2"]
    never = scored == 0
    with np.errstate(invalid="ignore", over="ignore"):
        rules = [
            ("visits", visits < 0, "a visit count below 0"),
            ("scored", (scored < 0) | (scored > visits), "cosine visits outside 0..visits"),
            ("zero_streak", (a["zero_streak"] < 0) | (a["zero_streak"] > visits), "a streak outside 0..visits"),
            ("last_step", (a["last_step"] < -1) | ((a["last_step"] == -1) != (visits == 0)),
             "last_step must be -1 exactly where visits is 0"),
            ("generation", (a["generation"] < -1) | ((a["generation"] == -1) != never),
             "generation must be -1 exactly where scored is 0"),
            *((name, ~np.isfinite(a[name]), "not finite") for name in ("weight", "mean", "m2")),
            *((name, never & (a[name] != 0), "nonzero for a problem with no cosine") for name in ("weight", "mean", "m2")),
            ("weight", ~never & ((weight < 1) | (weight > scored)), "outside [1, scored]"),
            ("mean", np.abs(mean) > 1 + COSINE_SLACK + 4 * _EPS * scored, "not a mean of cosines"),
            ("m2", (m2 < -16 * _EPS * scored) | (m2 > weight * (1 + COSINE_SLACK) ** 2 * (1 + 16 * _EPS * scored)),
             "not a spread of cosines"),
        ]
    for name, bad, why in rules:
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"ScoreMemory state: {name}[{row}]={a[name][row].item()!r} is impossible ({why}; "
                             f"visits={int(visits[row])}, scored={int(scored[row])}); {int(bad.sum())} row(s) "
                             f"like it")
