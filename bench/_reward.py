"""The benchmark's reward, given to both trainers.

Random-init models never write a correct answer, so an accuracy reward would be 0 everywhere,
every advantage 0 and the update a no-op on both sides. This reward varies between samples of one
prompt, so advantages are non-zero and both trainers do real policy-gradient work.
"""

from __future__ import annotations


def digit_share(text: str) -> float:
    """Fraction of the characters of `text` that are digits (0 for an empty text)."""
    return sum(ch.isdigit() for ch in text) / len(text) if text else 0.0


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None) -> float:
    """`digit_share` behind verl's custom-reward signature (`reward.custom_function.path`)."""
    return digit_share(solution_str)


def vowel_share(text: str) -> float:
    """Fraction of the characters of `text` that are vowels (0 for an empty text).

    For the GPU check's CPU dry run: its tiny model samples a few dozen tokens from a 1000-entry
    vocabulary of which 10 hold a digit, so `digit_share` is 0 for every sample there, every advantage
    0 and the phases' first-step comparisons would compare zeros. Vowels are in most tokens.
    """
    return sum(ch in "aeiouAEIOU" for ch in text) / len(text) if text else 0.0


def compute_vowel_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None
) -> float:
    """`vowel_share` behind verl's custom-reward signature (the GPU check's dry run)."""
    return vowel_share(solution_str)
