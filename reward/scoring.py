"""One reward from configuration: the tiered math reward, a user's compute_score, or a weighted list.

A `ScorerSpec` is plain data (it crosses a pipe to the worker processes as JSON); `Scorer` turns it
into callables once and then scores items. Built-in terms are looked up in REGISTRY; a term with a
`path` is a user's function loaded from that file, called with verl's four arguments and allowed
to return a float or a dict with a "score" key (its other numeric keys are logged as components).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npu_rl.registry import Registry
from reward.format_rewards import format_soft_xml, format_strict_xml, int_answer, xml_tags
from reward.grader import compute_score
from reward.limits import GradeTimeout, call_bounded
from reward.math_verify_adapter import math_verify_score
from reward.presets import ascend_sample_math
from reward.tiers import Tiers
from reward.user_functions import NOT_APPLICABLE, call_batched, call_user_function, detect_style

RewardFn = Callable[..., Any]
REGISTRY: Registry[RewardFn] = Registry("reward")  # names for reward.functions[i].name
REGISTRY.add("math", compute_score)  # tiered: correctness first, then format and reasoning bonuses
REGISTRY.add("accuracy", compute_score)  # correctness only: 1.0 / 0.0 (see Scorer._call_term)
REGISTRY.add("format_strict_xml", format_strict_xml)
REGISTRY.add("format_soft_xml", format_soft_xml)
REGISTRY.add("int_answer", int_answer)
REGISTRY.add("xml_tags", xml_tags)
REGISTRY.add("ascend_sample_math", ascend_sample_math)  # the Ascend GRPO sample's 0.7 / 0.2 / 0.1 (reward/presets.py)
REGISTRY.add("math_verify", math_verify_score)  # correctness by math-verify when installed (math_verify_adapter)


def reward_model_term(**_: Any) -> float:
    """`{name: reward_model}`: the discriminative reward model of reward.model, scored by npu_rl's
    RewardManager on the accelerator (npu_rl.reward_model), never by a grading worker."""
    raise RewardError("the reward_model term is scored by npu_rl.reward_model in the trainer, not per item")


REGISTRY.add("reward_model", reward_model_term)
_OWN_GRADERS = {"math", "accuracy"}


class RewardError(RuntimeError):
    """A reward function or its configuration is broken (not a property of the graded response)."""


@dataclass(frozen=True)
class Term:
    name: str
    weight: float = 1.0
    path: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments (verl's reward_kwargs)
    style: str = "auto"  # auto | verl | trl: how a user function is called (reward/user_functions.py)
    batched: bool = False  # one call per step with every item (TRL's way, verl's batch manager), in the trainer


@dataclass(frozen=True)
class ScorerSpec:
    """Everything a worker needs to rebuild the reward; mirrors npu_rl.config.RewardConfig."""

    terms: tuple[Term, ...] = ()  # empty: the tiered math reward alone
    custom_path: str | None = None  # verl's custom_reward_function: replaces the default reward
    custom_name: str = "compute_score"
    custom_kwargs: dict[str, Any] = field(default_factory=dict)  # verl's custom_reward_function.reward_kwargs
    custom_batched: bool = False  # verl's reward_manager=batch: the custom function takes lists
    strict: bool = False  # True: only the requested answer form counts (form as a gate)
    tiers: Tiers = field(default_factory=Tiers)
    timeout_s: float = 5.0
    with_model: bool = False  # a reward-model term is scored beside these (npu_rl.reward_model), not here

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScorerSpec:
        return cls(
            terms=tuple(Term(**t) for t in data["terms"]),
            custom_path=data["custom_path"],
            custom_name=data["custom_name"],
            custom_kwargs=data.get("custom_kwargs", {}),
            custom_batched=data.get("custom_batched", False),
            strict=data["strict"],
            tiers=Tiers(**data["tiers"]),
            timeout_s=data["timeout_s"],
            with_model=data.get("with_model", False),
        )


def load_function(path: str, name: str, key: str = "reward.custom_function") -> RewardFn:
    """Import `name` from the Python file at `path`, with errors that name the config key."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise RewardError(f"{key}.path: file {str(file)!r} does not exist")
    module_name = "npu_rl_user_reward_" + hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise RewardError(f"{key}.path: cannot import {str(file)!r}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise RewardError(f"{key}.path: importing {str(file)!r} failed: {type(err).__name__}: {err}") from err
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise RewardError(f"{key}.name: no function {name!r} in {str(file)!r} (functions there: {found})")
    return fn


class Scorer:
    """Scores one item at a time according to a ScorerSpec (see module docstring)."""

    def __init__(self, spec: ScorerSpec, bound_user_code: bool = True) -> None:
        self.spec = spec
        self.bound_user_code = bound_user_code  # False inside pool workers: the parent kills them
        if spec.custom_path and spec.terms:
            raise RewardError("set either reward.custom_function.path or reward.functions, not both")
        terms = list(spec.terms)
        if spec.custom_path:
            terms = [Term(spec.custom_name, 1.0, spec.custom_path, spec.custom_kwargs, batched=spec.custom_batched)]
        self.single = len(terms) <= 1 and not spec.with_model  # one term alone: logged as the total
        self.terms: list[tuple[str, float, RewardFn, bool, dict[str, Any], str, bool]] = []
        names: set[str] = set()
        for k, term in enumerate(terms or ([] if spec.with_model else [Term("math")])):
            key = "reward.custom_function" if spec.custom_path else f"reward.functions[{k}]"
            if term.path:
                fn, own = load_function(term.path, term.name, key), False
            elif term.name in REGISTRY:
                fn, own = REGISTRY[term.name], term.name in _OWN_GRADERS
            else:
                raise RewardError(
                    f"reward.functions[{k}].name: unknown reward {term.name!r}; built-in: {sorted(REGISTRY)} "
                    "(or give a path to load it from a file)"
                )
            if term.batched and not term.path:
                raise RewardError(f"{key}.batched: only a function loaded from a path is called batched")
            label = term.name if term.name not in names else f"{term.name}_{k}"
            names.add(label)
            style = "verl" if own else detect_style(fn, term.style, key, term.batched)
            self.terms.append((label, term.weight, fn, own, dict(term.kwargs), style, term.batched))

    @property
    def batched(self) -> bool:
        return any(t[6] for t in self.terms)

    def score_batched(self, items: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """Per item, {label: raw result} of the batched terms, each called once on every item (item tuples
        as `__call__` takes them); to be passed to `__call__` as `batched`. Bounded by timeout_s per item
        in all (over it, every item gets the timeout result)."""
        out: list[dict[str, Any]] = [{} for _ in items]
        records = [_record(*a[:4]) for a in items]
        prompts = [a[4] if len(a) > 4 else None for a in items]
        for label, _, fn, _, kwargs, style, batched in self.terms:
            if not batched:
                continue

            def call(fn: RewardFn = fn, kwargs: dict[str, Any] = kwargs, style: str = style, label: str = label) -> Any:
                return call_batched(fn, style, records, kwargs, prompts, label)

            try:
                raws = call_bounded(call, self.spec.timeout_s * max(1, len(items)))
            except GradeTimeout:
                raws = [self._timed_out()] * len(items)
            for slot, raw in zip(out, raws, strict=True):
                slot[label] = None if raw is NOT_APPLICABLE else raw
        return out

    def __call__(
        self,
        data_source: str,
        solution_str: str,
        ground_truth: Any,
        extra_info: Any = None,
        prompt: Any = None,
        batched: dict[str, Any] | None = None,
    ) -> dict:
        """{"score": float, "acc": bool | None, "timeout": bool, "components": {name: float}, "terms": [float]}.

        `terms` are the terms' own (unweighted) scores in configuration order, which GDPO normalizes one by
        one (npu_rl.algos.baselines.gdpo).

        `acc` is None when no term reports correctness (a user function returning only a score):
        a score is not a verdict, so it is logged as reward, never as accuracy. `prompt` (chat
        messages or a string) is only needed by TRL-style functions. `batched` holds this item's results of
        the batched terms (`score_batched`; None for a TRL function's "does not apply").
        """
        total, acc, timeout = 0.0, None, False
        components: dict[str, float] = {}
        terms: list[float] = []
        item = _record(data_source, solution_str, ground_truth, extra_info)
        for label, weight, fn, own, kwargs, style, in_batch in self.terms:
            try:
                if in_batch:
                    if batched is None or label not in batched:
                        raise RewardError(f"reward {label!r} is batched: score the batch with score_batched first")
                    raw = NOT_APPLICABLE if batched[label] is None else batched[label]
                else:
                    raw = self._call_term(label, fn, own, item, kwargs, style, prompt)
            except GradeTimeout:
                raw = self._timed_out()
            score, term_acc, extras = _unpack(label, raw)
            timeout = timeout or bool(extras.get("timeout", 0.0))
            total += 0.0 if math.isnan(score) else weight * score  # NaN: this term does not apply (TRL's None)
            terms.append(score)
            if acc is None and term_acc is not None:
                acc = term_acc
            prefix = "" if self.single else f"{label}/"
            if not self.single:
                components[label] = score
            components.update({prefix + k: v for k, v in extras.items()})
        return {
            "score": total,
            "acc": acc,
            "timeout": timeout,
            "components": components,
            "terms": terms,
        }

    def _timed_out(self) -> dict[str, Any]:
        """The result of a term that ran past its bound: graded incorrect, counted as a timeout."""
        return {"score": self.spec.tiers.incorrect, "acc": False, "timeout": 1.0}

    def _call_term(
        self, label: str, fn: RewardFn, own: bool, item: dict[str, Any], kwargs: dict[str, Any], style: str, prompt: Any
    ) -> Any:
        if own:
            result = fn(**item, strict=self.spec.strict, tiers=self.spec.tiers, timeout_s=self.spec.timeout_s)
            if label.startswith("accuracy"):
                result = {**result, "score": float(result["acc"])}
            return result

        def call() -> Any:
            return call_user_function(fn, style, item, kwargs, prompt, label)

        if self.bound_user_code:
            return call_bounded(call, self.spec.timeout_s)
        return call()


def _record(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any) -> dict[str, Any]:
    """One item under verl's compute_score argument names (what every reward style is called with)."""
    return {
        "data_source": data_source,
        "solution_str": solution_str,
        "ground_truth": ground_truth,
        "extra_info": extra_info,
    }


def _unpack(label: str, raw: Any) -> tuple[float, bool | None, dict[str, float]]:
    """(score, acc or None, numeric extras) from a float or a verl-style dict; NaN for a TRL-style
    function's None (the term does not apply to this item: no part of the total)."""
    if raw is NOT_APPLICABLE:
        return math.nan, None, {}
    if isinstance(raw, dict):
        if "score" not in raw:
            raise RewardError(f"reward function {label!r} returned a dict without a 'score' key: {sorted(raw)}")
        score, acc = raw["score"], raw.get("acc")
        extras = {k: float(v) for k, v in raw.items() if k not in ("score", "acc") and isinstance(v, numbers.Real)}
    else:
        score, acc, extras = raw, None, {}
    try:
        value = float(score)
    except (TypeError, ValueError) as err:
        raise RewardError(f"reward function {label!r} returned a non-numeric score {score!r}") from err
    if not math.isfinite(value):
        raise RewardError(f"reward function {label!r} returned a non-finite score {value}")
    return value, (None if acc is None else bool(acc)), extras
