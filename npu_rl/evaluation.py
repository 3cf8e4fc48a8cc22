"""One evaluation path: the trainer's validation and `python -m npu_rl.eval` both run
`evaluate_records`, so a number logged during training and one printed by the evaluator are
produced by the same sampling, seeds and grading.

Sampling is per-prompt seeded from the validation stream (npu_rl.seeds), so an evaluation is
reproducible whatever the batch size or number of ranks. Grading is lenient (any clearly stated
final answer counts) and reports correctness only where the grader gives a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from npu_rl.data import PromptRecord
from npu_rl.eval_metrics import PromptResult, sample_metric_names, sample_metrics
from npu_rl.progress import Progress
from npu_rl.reward_manager import RewardItem, RewardManager
from npu_rl.rollout import RolloutEngine, SamplingParams, generate
from npu_rl.seeds import prompt_seed
from reward.extract import extract_answer
from reward.grader import route
from reward.normalize import normalize_answer


@dataclass
class EvalConfig:
    """How an evaluation samples (the trainer fills it from `rollout.val_kwargs`)."""

    n: int = 1  # samples per prompt
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    max_new_tokens: int = 1024
    batch_size: int = 64  # prompts per generate call
    seed: int = 0  # the validation seed stream (npu_rl.seeds.prompt_seed)
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off

    def validate(self, ks: Sequence[int] = ()) -> None:
        """Reject settings that would make the numbers meaningless, before any generation."""
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0 or self.temperature != self.temperature:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature == 0 and self.n > 1:
            raise ValueError("greedy decoding (temperature 0) gives n identical samples; use temperature > 0")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be between 0 and 1, got {self.min_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1: off), got {self.repetition_penalty}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        bad = [k for k in ks if not 1 <= k <= self.n]
        if bad:
            raise ValueError(f"k values must be between 1 and n ({self.n}); got {bad}")

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(
            self.n, self.temperature, self.top_p, self.top_k, self.max_new_tokens, self.min_p, self.repetition_penalty
        )


@dataclass
class GradedPrompt:
    """One prompt's samples, graded."""

    record: PromptRecord
    responses: list[str]
    acc: list[bool | None]
    scores: list[float]
    answers: list[str | None]  # normalized extracted answers (the votes for maj@N)
    lengths: list[int]
    finish_reasons: list[str]
    tool_calls: list[int] | None = None  # per sample, with a multi-turn rollout only
    num_turns: list[int] | None = None  # per sample, verl's num_turns (multi-turn rollouts)

    @property
    def judged(self) -> bool:
        """Whether the grader gave a correctness verdict (built-in graders do; a bare score does not)."""
        return all(a is not None for a in self.acc)

    def result(self) -> PromptResult:
        return PromptResult(
            self.record.data_source,
            self.record.extra_info,
            [bool(a) for a in self.acc] if self.judged else None,
            self.answers,
            self.lengths,
            [f == "length" for f in self.finish_reasons],
            self.scores,
        )

    def line(self) -> dict[str, Any]:
        """The generations-file row of this prompt."""
        rec = self.record
        return {
            "index": rec.index,
            "data_source": rec.data_source,
            "prompt": rec.prompt_text,
            "ground_truth": rec.ground_truth,
            "extra_info": rec.extra_info,
            "responses": self.responses,
            "answers": self.answers,
            "acc": self.acc,
            "scores": self.scores,
            "lengths": self.lengths,
            "finish_reasons": self.finish_reasons,
            **({"tool_calls": self.tool_calls} if self.tool_calls is not None else {}),
            **({"num_turns": self.num_turns} if self.num_turns is not None else {}),
        }


def _answer(text: str, truncated: bool, rec: PromptRecord) -> str | None:
    """The normalized final answer for majority voting (None when cut off or absent)."""
    if truncated:
        return None
    found = extract_answer(text, requested=route(rec.data_source, rec.extra_info)[1], strict=False)
    return normalize_answer(found.answer).replace(" ", "") if found else None


def evaluate_records(
    engine: RolloutEngine,
    records: Sequence[PromptRecord],
    tokenizer: Any,
    grader: RewardManager,
    cfg: EvalConfig,
    progress: bool = False,
) -> list[GradedPrompt]:
    """Sample `cfg.n` responses per record in batches of `cfg.batch_size`, grade them, and return
    one `GradedPrompt` per record (in order). `progress` prints a progress line (with ETA)."""
    params = cfg.sampling
    graded: list[GradedPrompt] = []
    with Progress("evaluation", total=len(records), unit="prompts", enabled=progress) as bar:
        for start in range(0, len(records), cfg.batch_size):
            chunk = records[start : start + cfg.batch_size]
            seeds = [prompt_seed(cfg.seed, 0, r.index, validation=True) for r in chunk]
            batch = generate(engine, chunk, params, seeds)
            texts = batch.decode(tokenizer)
            truncated = batch.truncated
            rows = batch.row_records
            scored = grader.score(
                [
                    RewardItem(r.data_source, t, r.ground_truth, r.extra_info, c, r.messages or r.prompt_text)
                    for r, t, c in zip(rows, texts, truncated, strict=True)
                ]
            )
            members: list[list[int]] = [[] for _ in chunk]
            for row, g in enumerate(batch.group.tolist()):
                members[g].append(row)
            lengths = batch.lengths.tolist()
            calls, turns = (
                batch.row_metrics[k].int().tolist() if k in batch.row_metrics else None
                for k in ("tool_calls", "num_turns")
            )
            for rec, mine in zip(chunk, members, strict=True):
                graded.append(
                    GradedPrompt(
                        record=rec,
                        responses=[texts[i] for i in mine],
                        acc=[scored.acc[i] for i in mine],
                        scores=[scored.scores[i] for i in mine],
                        answers=[_answer(texts[i], truncated[i], rec) for i in mine],
                        lengths=[lengths[i] for i in mine],
                        finish_reasons=[batch.finish_reasons[i] for i in mine],
                        tool_calls=None if calls is None else [calls[i] for i in mine],
                        num_turns=None if turns is None else [turns[i] for i in mine],
                    )
                )
            bar.update(len(chunk))
    return graded


VARIABLES = ("acc", "reward")  # verl's core variable is acc where the grader judged, else reward
CORE_METRICS = ("mean", "maj", "best")  # verl's val-core metrics (at the largest N), the rest val-aux


def validation_metrics(
    graded: Sequence[GradedPrompt],
    sources: list[str],
    n: int,
    with_tools: bool,
    all_sum: Callable[[torch.Tensor], torch.Tensor],
    all_max: Callable[[torch.Tensor], torch.Tensor] = torch.clone,
) -> dict[str, float]:
    """verl's validation metrics (process_validation_metrics and its trainer's val-core / val-aux split)
    from this rank's graded prompts, averaged over the prompts of all ranks (`all_sum` sums): for each
    data source, each prompt's `sample_metrics` of `acc` (prompts the grader judged) and of `reward`,
    with the extracted answers as the votes of maj@k. The core variable is acc where any prompt of the
    source was judged, else reward; its mean, maj and best metrics naming N go under
    val-core/<source>/<variable>/, everything else under val-aux/. With tool use also
    val-aux/<source>/tool/call_rate/mean@N (share of responses with a call) and tool/calls/mean@N
    (calls per response), and verl's val-aux/num_turns/{min,max,mean} over every sample (`all_max`
    takes the maximum over ranks). Every prompt has N samples; `sources` is the same list on every rank."""
    names = sample_metric_names(n)
    width = len(names) + 1  # per variable: each metric's sum over prompts, then the prompt count
    sums = {source: [0.0] * (len(VARIABLES) * width + 2) for source in sources}  # + tool call rate, calls
    for g in graded:
        if len(g.scores) != n:
            raise ValueError(f"validation prompt {g.record.index} has {len(g.scores)} samples, not {n}")
        entry = sums[g.record.data_source]
        values = {"acc": [float(bool(a)) for a in g.acc] if g.judged else None, "reward": g.scores}
        for slot, var in enumerate(VARIABLES):
            if values[var] is not None:
                stats = sample_metrics(values[var], g.answers)
                for j, name in enumerate(names):
                    entry[slot * width + j] += stats[name]
                entry[slot * width + width - 1] += 1
        if g.tool_calls is not None:
            entry[-2] += sum(c > 0 for c in g.tool_calls) / n
            entry[-1] += sum(g.tool_calls) / n
    totals = all_sum(torch.tensor([v for s in sources for v in sums[s]], dtype=torch.float64)).view(len(sources), -1)
    metrics = {}
    for source, row in zip(sources, totals.tolist(), strict=True):
        counts = {var: row[slot * width + width - 1] for slot, var in enumerate(VARIABLES)}
        core = "acc" if counts["acc"] else "reward"
        for slot, var in enumerate(VARIABLES):
            for j, name in enumerate(names if counts[var] else []):
                section = "val-core" if var == core and name.startswith(CORE_METRICS) and f"@{n}" in name else "val-aux"
                metrics[f"{section}/{source}/{var}/{name}"] = row[slot * width + j] / counts[var]
        if with_tools and counts["reward"]:
            metrics[f"val-aux/{source}/tool/call_rate/mean@{n}"] = row[-2] / counts["reward"]
            metrics[f"val-aux/{source}/tool/calls/mean@{n}"] = row[-1] / counts["reward"]
    if with_tools:  # every rank takes part in both collectives, with or without samples of its own
        turns = [t for g in graded for t in g.num_turns or []]
        count, total = all_sum(torch.tensor([len(turns), sum(turns)], dtype=torch.float64)).tolist()
        top, neg_bottom = all_max(torch.tensor([max(turns, default=-math.inf), -min(turns, default=math.inf)])).tolist()
        if count:
            metrics.update({"val-aux/num_turns/min": -neg_bottom, "val-aux/num_turns/max": top,
                            "val-aux/num_turns/mean": total / count})  # fmt: skip
    return metrics
