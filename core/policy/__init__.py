"""Decision policies: one small class each, asked in order until one answers."""

import functools

from core.policy.base import Policy, Prediction, Predictor, Situation, Verdict, decide
from core.policy.explore import ExplorePolicy
from core.policy.guard import GuardPolicy
from core.policy.median import MedianPolicy
from core.policy.never import NeverStopPolicy
from core.policy.oracle import OraclePolicy
from core.policy.warmup import WarmupPolicy

__all__ = [
    "ExplorePolicy",
    "GuardPolicy",
    "MedianPolicy",
    "NeverStopPolicy",
    "OraclePolicy",
    "Policy",
    "Prediction",
    "Predictor",
    "Situation",
    "Verdict",
    "WarmupPolicy",
    "chain_for",
    "decide",
]


@functools.cache  # the policies hold no state: one chain per setting, not one per checkpoint
def chain_for(decider: str) -> tuple[Policy, ...]:
    """The policies of a study's `decider` setting, in the order they are asked."""
    head: tuple[Policy, ...] = (GuardPolicy(), WarmupPolicy(), ExplorePolicy())
    if decider == "never":
        return (GuardPolicy(), NeverStopPolicy())
    if decider == "median":
        return (*head, MedianPolicy())
    return (*head, OraclePolicy(), MedianPolicy())
