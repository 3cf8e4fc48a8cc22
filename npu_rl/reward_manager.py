"""Bridge from the trainer to the reward package: grades a batch of responses.

The manager owns the grading pool for the whole run (workers start once, warm, and are reused
every step) and turns per-item results into the columns the trainer logs: scores, correctness,
one list per reward component (reward/<name>/mean) and the count of items that ran out of their
wall-clock budget (reward/timeouts). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from npu_rl.config import RewardConfig
from npu_rl.config.objective import REWARD_MODEL_TERM
from reward.pool import GradingPool
from reward.scoring import RewardError, Scorer, ScorerSpec, Term
from reward.tiers import Tiers

# Per-item flags that are counted in RewardBatch fields rather than logged as components.
_COUNTED = ("timeout", "error")


@dataclass
class RewardItem:
    data_source: str
    solution_str: str
    ground_truth: Any  # a string in verl's schema; a list means several accepted answers
    extra_info: dict[str, Any] | None = None
    truncated: bool = False  # the response hit max_new_tokens: graded as no answer
    prompt: Any = None  # chat messages or a string; passed to TRL-style reward functions


@dataclass
class RewardBatch:
    scores: list[float]  # what the policy optimizes
    acc: list[bool | None]  # correctness, for val-core/<source>/acc; None where no grader judged it
    components: dict[str, list[float]] = field(default_factory=dict)  # logged as reward/<name>/mean
    timeouts: int = 0  # items over reward.timeout_s (scored as incorrect)
    errors: int = 0  # items whose grading process crashed or hit an internal grader error (scored incorrect)
    baselines: list[float] | None = None  # per row: its prompt's greedy answer's score (remax)
    # per row, each term's own score (reward terms in config order, then any shaping; empty: not reported);
    # GDPO normalizes them one by one
    terms: list[list[float]] = field(default_factory=list)
    term_weights: list[float] = field(default_factory=list)  # what each term is weighted with in `scores`


class ModelScorer(Protocol):
    """What scores the reward-model term (npu_rl.reward_model.RewardModel; torch lives there)."""

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]: ...


def spec_from_config(cfg: RewardConfig, strict: bool) -> ScorerSpec:
    """The plain-data reward description shipped to worker processes (`cfg` validated: its own checks)."""
    cfg.validate("reward")
    return ScorerSpec(
        terms=tuple(
            Term(f.name, f.weight, f.path, dict(f.kwargs), f.style, f.batched)
            for f in cfg.functions
            if f.name != REWARD_MODEL_TERM or f.path
        ),
        custom_path=cfg.custom_function.path,
        custom_name=cfg.custom_function.name,
        custom_kwargs=dict(cfg.custom_function.reward_kwargs),
        custom_batched=cfg.custom_function.batched,
        strict=strict,
        tiers=Tiers(cfg.incorrect_score, cfg.correct_score, cfg.format_bonus, cfg.reasoning_bonus),
        timeout_s=cfg.timeout_s,
        with_model=cfg.uses_model,
    )


def _flagged(result: dict[str, Any], flag: str) -> bool:
    """Whether any term of an item's result raised `flag` (e.g. "error" or "math/error")."""
    return any(v for k, v in result.get("components", {}).items() if k.rpartition("/")[2] == flag)


class RewardManager:
    """Scores batches with the configured reward; `strict=False` gives the lenient evaluation grader."""

    def __init__(self, cfg: RewardConfig, strict: bool | None = None, model: ModelScorer | None = None) -> None:
        self.cfg = cfg
        self.strict = cfg.strict if strict is None else strict
        spec = spec_from_config(cfg, self.strict)
        self._scorer = Scorer(spec)  # built here too so that config errors surface before training
        self.term_weights = [t[1] for t in self._scorer.terms]
        if cfg.uses_model and model is None:
            raise ValueError("reward.functions has a reward_model term: pass the npu_rl.reward_model.RewardModel")
        self.model = model if cfg.uses_model else None
        if self.model is not None:  # its term comes after the rule-based ones
            self.term_weights.append(
                next(f.weight for f in cfg.functions if f.name == REWARD_MODEL_TERM and not f.path)
            )
        self._pool = GradingPool(spec, cfg.num_workers) if cfg.num_workers > 0 else None

    def _args(self, item: RewardItem) -> tuple[Any, ...]:
        extra = dict(item.extra_info or {})
        if item.truncated:
            extra["truncated"] = True
        if self.cfg.answer_format and "answer_format" not in extra:
            extra["answer_format"] = self.cfg.answer_format
        return (item.data_source, item.solution_str, item.ground_truth, extra, item.prompt)

    def score(self, items: list[RewardItem]) -> RewardBatch:
        args = [self._args(i) for i in items]
        if self._scorer.batched:  # batched terms: one call here, their results then travel with each item
            try:
                batched = self._scorer.score_batched(args)
            except RewardError:
                raise
            except Exception as err:
                raise RewardError(f"batched reward function raised: {type(err).__name__}: {err}") from err
            args = [(*a, b) for a, b in zip(args, batched, strict=True)]
        if self._pool is not None:
            results = self._pool.map(args)
        else:
            results = [self._score_here(k, a) for k, a in enumerate(args)]
        names = sorted({k for r in results for k in r.get("components", {}) if k.rpartition("/")[2] not in _COUNTED})
        components = {n: [float(r.get("components", {}).get(n, 0.0)) for r in results] for n in names}
        errors = sum(1 for r in results if r.get("crashed") or _flagged(r, "error"))
        unscored = [0.0] * len(self._scorer.terms)  # an item the pool timed out or lost has no term scores
        terms = [[float(v) for v in r.get("terms", unscored)] for r in results]
        scores = [float(r["score"]) for r in results]
        if self.model is not None:  # the hybrid reward's model term, scored here on the accelerator
            model_scores = self.model.score([i.prompt for i in items], [i.solution_str for i in items])
            weight = self.term_weights[-1]
            scores = [s + weight * m for s, m in zip(scores, model_scores, strict=True)]
            terms = [[*row, m] for row, m in zip(terms, model_scores, strict=True)]
            components[REWARD_MODEL_TERM] = model_scores
        return RewardBatch(
            scores=scores,
            acc=[None if r.get("acc") is None else bool(r["acc"]) for r in results],
            components=components,
            timeouts=sum(1 for r in results if r.get("timeout")),
            errors=errors,
            terms=terms,
            term_weights=list(self.term_weights),
        )

    def _score_here(self, k: int, args: tuple[Any, ...]) -> dict[str, Any]:
        """In-process scoring (reward.num_workers=0); a user function's exception names the item."""
        try:
            return self._scorer(*args)
        except RewardError:
            raise
        except Exception as err:
            raise RewardError(f"reward function raised on item {k}: {type(err).__name__}: {err}") from err

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> RewardManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
