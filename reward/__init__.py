"""Tiered semantic math reward: correct-first grading that never executes or sympifies model output.

verl-compatible entry point::

    from reward import compute_score
    compute_score("lighteval/MATH", "... so the answer is $\\boxed{\\frac14}$.", "0.25")
    # {'score': 1.2, 'acc': True, 'format': 1.0, 'reasoning': 1.0, 'has_answer': 1.0, ...}

Importing this package is cheap (no torch; mpmath only on the first non-rational comparison). See
docs/reward.md for the tier table, the supported answer forms and the weighted-list usage.
"""

from reward.equivalence import answers_equal
from reward.extract import extract_answer
from reward.grader import compute_score, grade, route
from reward.scoring import REGISTRY, RewardError, Scorer, ScorerSpec, Term
from reward.tiers import Tiers

__all__ = [
    "REGISTRY",
    "RewardError",
    "Scorer",
    "ScorerSpec",
    "Term",
    "Tiers",
    "answers_equal",
    "compute_score",
    "extract_answer",
    "grade",
    "route",
]
