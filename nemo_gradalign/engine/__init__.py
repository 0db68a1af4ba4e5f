"""Exact per-problem gradient scores on sharded models. Imports neither NeMo RL nor the demo."""

from nemo_gradalign.engine.groups import EngineGroups
from nemo_gradalign.engine.reference import EmptyReferenceGradient, ReferenceGradient
from nemo_gradalign.engine.rules import UnsupportedLayout
from nemo_gradalign.engine.scorer import GradientEngine, ProblemStats

__all__ = [
    "EmptyReferenceGradient", "EngineGroups", "GradientEngine", "ProblemStats",
    "ReferenceGradient", "UnsupportedLayout",
]
