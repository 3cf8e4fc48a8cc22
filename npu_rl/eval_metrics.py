"""Evaluation statistics as pure functions: mean@N, unbiased pass@k, maj@N and their breakdowns, and
verl's per-prompt bootstrap statistics (best@N, worst@N, maj@N) that the trainer's validation logs.

Kept apart from generation so each number can be checked by hand: a prompt's result is just its n
correctness flags, its n extracted answers (None when there is none) and its n response lengths.
"""

from __future__ import annotations

import functools
import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# extra_info keys that split the table, as MATH-style data carries them (`type` is MATH's subject).
BREAKDOWN_KEYS = {"level": ("level",), "subject": ("subject", "type")}


@dataclass
class PromptResult:
    """The graded samples of one prompt."""

    data_source: str
    extra_info: dict[str, Any]
    correct: list[bool] | None  # None: the grader returned a score but no verdict (a user function)
    answers: list[str | None]  # normalized extracted answers, the votes for maj@N
    lengths: list[int]  # response tokens
    truncated: list[bool]  # hit max_new_tokens
    scores: list[float] | None = None  # the reward of each sample


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with c correct out of n samples: 1 - C(n-c, k) / C(n, k).

    The estimator of Chen et al. (2021): the chance that k samples drawn without replacement from
    the n include a correct one. Exact integer binomials, so no cancellation for large n.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """Whether the most frequent extracted answer is right (ties go to the answer seen first).

    Responses without an answer do not vote; with no votes at all the prompt counts as wrong.
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return any(ok for a, ok in zip(answers, correct, strict=True) if a == winner)


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [1]
    while ks[-1] * 2 <= n:
        ks.append(ks[-1] * 2)
    if ks[-1] != n:
        ks.append(n)
    return ks


def group_metrics(results: list[PromptResult], n: int, ks: list[int]) -> dict[str, float]:
    """mean@n, pass@k for each k, maj@n (n > 1), reward/mean@n, response length mean and clip ratio.

    `n` names the metrics; each prompt's own sample count is used in its sums.
    Correctness metrics count only prompts whose grader gave a verdict; a grader that returns only
    a score (a user function without an `acc` key) contributes to reward/mean@n alone, so format
    credit can never pass for accuracy.
    """
    if not results:
        return {"count": 0}
    metrics: dict[str, float] = {"count": len(results)}
    judged = [r for r in results if r.correct is not None]
    if judged:
        metrics[f"mean@{n}"] = sum(sum(r.correct) / len(r.correct) for r in judged) / len(judged)
        for k in ks:
            metrics[f"pass@{k}"] = sum(pass_at_k(len(r.correct), sum(r.correct), k) for r in judged) / len(judged)
        if n > 1:
            metrics[f"maj@{n}"] = sum(majority_correct(r.answers, r.correct) for r in judged) / len(judged)
    scored = [r for r in results if r.scores is not None]
    if scored:
        metrics[f"reward/mean@{n}"] = sum(sum(r.scores) / len(r.scores) for r in scored) / len(scored)
    lengths = [x for r in results for x in r.lengths]
    metrics["response_length/mean"] = sum(lengths) / len(lengths)
    metrics["response_length/clip_ratio"] = sum(t for r in results for t in r.truncated) / len(lengths)
    return metrics


def _breakdown_value(extra_info: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = extra_info.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def summarize(results: list[PromptResult], n: int, ks: list[int]) -> dict[str, Any]:
    """Overall metrics plus per data_source, and per level / subject when extra_info carries them."""
    groups: dict[str, dict[str, list[PromptResult]]] = {"data_source": defaultdict(list)}
    for r in results:
        groups["data_source"][r.data_source].append(r)
        for name, keys in BREAKDOWN_KEYS.items():
            value = _breakdown_value(r.extra_info, keys)
            if value is not None:
                groups.setdefault(name, defaultdict(list))[value].append(r)
    return {
        "metrics": group_metrics(results, n, ks),
        **{
            f"by_{name}": {value: group_metrics(members, n, ks) for value, members in sorted(by.items())}
            for name, by in groups.items()
        },
    }


def format_table(summary: dict[str, Any], n: int, ks: list[int]) -> str:
    """A fixed-width table: one row overall, then one per data source, level and subject."""
    cols = [f"mean@{n}", *[f"pass@{k}" for k in ks if k != 1 or n != 1], *([f"maj@{n}"] if n > 1 else [])]
    header = f"{'group':<40} {'count':>6} " + " ".join(f"{c:>8}" for c in cols) + f" {'resp_len':>9} {'clip':>6}"
    rows = [header, "-" * len(header)]

    def row(label: str, m: dict[str, float]) -> str:
        values = " ".join(f"{m.get(c, float('nan')):>8.4f}" for c in cols)
        length = m.get("response_length/mean", float("nan"))
        clip = m.get("response_length/clip_ratio", float("nan"))
        return f"{label[:40]:<40} {int(m['count']):>6} {values} {length:>9.1f} {clip:>6.3f}"

    rows.append(row("all", summary["metrics"]))
    for key, value in summary.items():
        if key.startswith("by_"):
            for name, m in value.items():
                rows.append(row(f"{key[3:]}={name}", m))
    return "\n".join(rows)


VERL_BOOTSTRAPS, VERL_SEED = 1000, 42  # verl's bootstrap_metric defaults


def bootstrap_sizes(n: int) -> list[int]:
    """verl's subset sizes for a prompt with n samples: 2, 4, 8, ... below n, then n (none for n <= 1)."""
    sizes, k = [], 2
    while n > 1 and k < n:
        sizes.append(k)
        k *= 2
    return [*sizes, n] if n > 1 else []


@functools.lru_cache(maxsize=64)
def _draws(n: int, k: int, seed: int) -> np.ndarray:
    """verl's bootstrap indices for n samples and subsets of k (the same for every prompt of a validation:
    verl reseeds before each draw), drawn once."""
    draws = np.random.RandomState(seed).choice(n, size=(VERL_BOOTSTRAPS, k), replace=True)
    draws.setflags(write=False)
    return draws


def sample_metric_names(n: int) -> list[str]:
    """The names `sample_metrics` gives a prompt with n samples, in its order."""
    names = [f"mean@{n}"] + ([f"std@{n}"] if n > 1 else [])
    for k in bootstrap_sizes(n):
        names += [f"{stat}@{k}/{agg}" for stat in ("best", "worst", "maj") for agg in ("mean", "std")]
    return names


def sample_metrics(values: Sequence[float], votes: Sequence[Hashable], seed: int = VERL_SEED) -> dict[str, float]:
    """verl's process_validation_metrics for one prompt and one variable (its samples' rewards or
    correctness): mean@n and std@n (population) of the n values; for each size k of `bootstrap_sizes`,
    1000 subsets of k drawn with replacement by numpy's legacy generator seeded `seed` (the draws verl
    makes, so the numbers are verl's to the last bit), and the mean and std over them of the subset's
    best and worst value and of its majority vote's value (the votes of the subset counted; ties to the
    vote seen first in the subset; the value of that vote's first sample there: verl's calc_maj_val).
    `votes` are the samples' extracted answers (None is a vote too, as verl's "[INVALID]")."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    out = {f"mean@{n}": float(np.mean(v))}
    if n <= 1:
        return out
    out[f"std@{n}"] = float(np.std(v))
    index: dict[Hashable, int] = {}
    codes = np.array([index.setdefault(vote, len(index)) for vote in votes])
    for k in bootstrap_sizes(n):
        draws = _draws(n, k, seed)
        picked = v[draws]
        onehot = codes[draws][:, :, None] == np.arange(len(index))  # [bootstraps, k, votes]
        counts, seen = onehot.sum(1), onehot.any(1)
        first = np.where(seen, onehot.argmax(1), k)  # each vote's first position in the subset
        position = np.where(counts == counts.max(1, keepdims=True), first, k).min(1)
        majority = picked[np.arange(VERL_BOOTSTRAPS), position]
        for name, stat in (("best", picked.max(1)), ("worst", picked.min(1)), ("maj", majority)):
            out[f"{name}@{k}/mean"], out[f"{name}@{k}/std"] = float(np.mean(stat)), float(np.std(stat))
    return out
