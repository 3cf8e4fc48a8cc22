"""Calling a user's reward function the way the framework it was written for calls it.

Two conventions are accepted, chosen per term by `style` (`reward.functions[k].style`, or detected
from the function's signature with `auto`, the default):

verl      ``fn(data_source=..., solution_str=..., ground_truth=..., extra_info=..., **reward_kwargs)``
          one response at a time, by keyword exactly as verl's reward managers call it, so parameter
          order does not matter; returns a number or a dict with a "score" key.
trl       ``fn(prompts=[...], completions=[...], **columns, **reward_kwargs) -> list[float]``
          TRL's GRPOTrainer signature: lists, one entry per response, the dataset's other columns
          passed by name. Columns here are `data_source`, `ground_truth` (verl's
          reward_model.ground_truth), `extra_info`, and every key of `extra_info` under its own name
          (unless it would shadow one of those). With chat data `prompts` holds message lists and
          `completions` holds `[{"role": "assistant", "content": text}]`, as TRL passes
          conversational data; with plain-string data both are strings. A `None` entry (TRL's
          "this function does not apply") comes back as NaN: it adds 0 to the total, stays out of
          the term's logged mean, and GDPO leaves it out of the term's statistics, as TRL does.

`auto` picks trl when the function has a parameter named `completions`, verl otherwise.
Items reach TRL functions one at a time (lists of length one) so that the per-item time budget and
the worker pool apply to them as to any other reward; a term marked `batched` gets the whole step's
items in one call instead, as TRL calls it (and verl's batch reward manager, whose functions take
``data_sources=[...], solution_strs=[...], ground_truths=[...], extra_infos=[...]``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

STYLES = ("auto", "verl", "trl")


NOT_APPLICABLE = object()  # a TRL-style function's None (or NaN) for one item: "this term does not apply"


def _parameters(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume they take anything
        return set(), True
    names = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def detect_style(fn: Callable[..., Any], style: str, key: str, batched: bool = False) -> str:
    """The calling convention for `fn` ("verl" or "trl"); a function that cannot take it is an error."""
    from reward.scoring import RewardError  # scoring imports this module

    if style not in STYLES:
        raise RewardError(f"{key}.style: {style!r} is not one of {list(STYLES)}")
    names, var_kw = _parameters(fn)
    if style == "auto":
        style = "trl" if "completions" in names else "verl"
    needed = ("prompts", "completions") if style == "trl" else ("solution_strs",) if batched else ("solution_str",)
    missing = [n for n in needed if n not in names]
    if missing and not var_kw:
        raise RewardError(
            f"{key}: function {getattr(fn, '__name__', fn)!r} is called {style}-style but has no parameter "
            f"{missing}; verl style takes (data_source, solution_str, ground_truth, extra_info), batched "
            "(data_sources, solution_strs, ground_truths, extra_infos), TRL style (prompts, completions, **columns)"
        )
    return style


def trl_columns(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The dataset columns a TRL reward function receives for `items` (see the module docstring); an
    extra_info key some items lack is None for them, as a dataset column with a missing value."""
    columns = {k: [item[k] for item in items] for k in ("data_source", "ground_truth", "extra_info")}
    extras = [item.get("extra_info") or {} for item in items]
    keys = dict.fromkeys(
        k for extra in extras for k in extra if k not in columns and k not in ("prompts", "completions")
    )
    columns.update({k: [extra.get(k) for extra in extras] for k in keys})
    return columns


def call_user_function(
    fn: Callable[..., Any], style: str, item: dict[str, Any], kwargs: dict[str, Any], prompt: Any, label: str
) -> Any:
    """One item's reward from `fn` in its style: a number or a dict with "score" (verl) / a number (trl)."""
    if style == "verl":
        return fn(**item, **kwargs)
    return call_batched(fn, style, [item], kwargs, [prompt], label)[0]


def call_batched(
    fn: Callable[..., Any],
    style: str,
    items: list[dict[str, Any]],
    kwargs: dict[str, Any],
    prompts: list[Any],
    label: str,
) -> list[Any]:
    """Every item's reward from one call of `fn`: TRL's signature, or verl's batch one (plural names)."""
    from reward.scoring import RewardError

    if style == "verl":
        out = fn(
            data_sources=[i["data_source"] for i in items],
            solution_strs=[i["solution_str"] for i in items],
            ground_truths=[i["ground_truth"] for i in items],
            extra_infos=[i["extra_info"] for i in items],
            **kwargs,
        )
    else:
        completions = [
            [{"role": "assistant", "content": i["solution_str"]}] if isinstance(p, list) else i["solution_str"]
            for i, p in zip(items, prompts, strict=True)
        ]
        prompts = ["" if p is None else p for p in prompts]
        out = fn(prompts=prompts, completions=completions, **trl_columns(items), **kwargs)
    if not isinstance(out, (list, tuple)) or len(out) != len(items):
        got = f"{len(out)} values" if isinstance(out, (list, tuple)) else repr(out)[:200]
        raise RewardError(
            f"reward {label!r} must return a list with one score per completion ({len(items)}), got {got}"
        )
    if style == "verl":
        return list(out)
    return [NOT_APPLICABLE if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in out]
