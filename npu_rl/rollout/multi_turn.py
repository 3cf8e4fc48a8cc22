"""Multi-turn rollout: the policy generates until it calls a tool or ends its turn; the calls are
executed, their answers appended as tool messages rendered by the tokenizer's chat template, and
generation continues, up to `max_assistant_turns` turns within the response token budget.

Wraps any `RolloutEngine` (hf or vLLM): each turn is one `engine.generate` call on the active rows'
extended contexts with n=1 and a seed derived from (prompt seed, sample, turn), so a row's tokens
depend on its own seed only, whatever else is in the batch, on any backend and across a resume.
Tool-answer tokens are part of the response (the policy attends to them) but `token_mask` is 0
there: they are out of the loss, their log-probs are not counted, and the grader does not see them.

Tool calls are parsed in Qwen2.5's format, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
(what its chat template teaches when given `tools=`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from npu_rl.agent_tools import Tool
from npu_rl.rollout.base import RolloutEngine, RolloutOutput, SamplingParams, grouped

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_RENDER_BASE = [
    {"role": "system", "content": "s"},
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "a"},
]


@dataclass
class ToolCall:
    """A parsed call; `error` is set when the text was not a well-formed call."""

    name: str
    arguments: dict[str, Any]
    error: str | None = None


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every `<tool_call>{json}</tool_call>` in an assistant turn, malformed ones as errors (the model
    hears about them instead of silently being ignored)."""
    calls = []
    for body in TOOL_CALL.findall(text):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as err:
            calls.append(ToolCall("", {}, f"the tool call is not valid JSON ({err.msg})"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            calls.append(ToolCall("", {}, 'a tool call needs {"name": ..., "arguments": {...}}'))
            continue
        args = obj.get("arguments", {})
        if isinstance(args, str):  # some models send the arguments JSON-encoded
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = None
        if not isinstance(args, dict):
            calls.append(ToolCall(obj["name"], {}, "the tool call's arguments must be a JSON object"))
            continue
        calls.append(ToolCall(obj["name"], args))
    return calls


def turn_seed(seed: int, sample: int, turn: int) -> int:
    """The seed of one row's turn: depends only on its prompt's seed, its sample number and the turn."""
    return int(np.random.SeedSequence([seed, sample, turn]).generate_state(1)[0])


class ToolMessages:
    """Renders tool answers as the chat template does, as token ids to append after an assistant turn."""

    def __init__(self, tokenizer: Any, eos_text: str) -> None:
        self.tokenizer = tokenizer
        base = tokenizer.apply_chat_template(_RENDER_BASE, tokenize=False)
        if eos_text not in base:
            raise ValueError(f"the chat template does not end assistant turns with {eos_text!r}")
        self.base = base
        self.cut = base.rindex(eos_text) + len(eos_text)  # right after the assistant's end-of-turn token

    def ids(self, answers: Sequence[str]) -> list[int]:
        """Tokens from the end of the assistant turn through the next assistant header."""
        messages = _RENDER_BASE + [{"role": "tool", "content": a} for a in answers]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not text.startswith(self.base[: self.cut]):
            raise ValueError("the chat template renders earlier messages differently once a tool message follows")
        return self.tokenizer(text[self.cut :], add_special_tokens=False)["input_ids"]


@dataclass
class _Row:
    context: list[int]
    seed: int | None
    sample: int
    ids: list[int] = field(default_factory=list)
    mask: list[float] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str = "stop"
    done: bool = False
    turns: int = 0
    calls: int = 0
    successes: int = 0
    latency: float = 0.0
    tool_reward: float = 0.0

    def extend(self, ids: list[int], logprobs: list[float] | None) -> None:
        self.ids += ids
        self.context += ids
        self.mask += [0.0 if logprobs is None else 1.0] * len(ids)
        self.logprobs += [0.0] * len(ids) if logprobs is None else logprobs


class MultiTurnRollout:
    """A `RolloutEngine` that runs tool-using conversations on top of another engine."""

    def __init__(
        self,
        engine: RolloutEngine,
        tokenizer: Any,
        tools: dict[str, Tool],
        pad_token_id: int,
        max_assistant_turns: int = 5,
        max_tool_response_tokens: int = 256,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.tools = tools
        self.pad_token_id = pad_token_id
        self.max_assistant_turns = max_assistant_turns
        self.max_tool_response_tokens = max_tool_response_tokens
        self.messages = ToolMessages(tokenizer, tokenizer.eos_token)

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> RolloutOutput:
        rows = [
            _Row(list(p), None if seeds is None else seeds[g], s)
            for g, p in enumerate(prompts)
            for s in range(params.n)
        ]
        for turn in range(self.max_assistant_turns):
            active = [r for r in rows if not r.done]
            if not active:
                break
            budget = max(params.max_new_tokens - len(r.ids) for r in active)
            turn_seeds = None if seeds is None else [turn_seed(r.seed, r.sample, turn) for r in active]
            out = self.engine.generate(
                [r.context for r in active], replace(params, n=1, max_new_tokens=budget), seeds=turn_seeds
            )
            for i, row in enumerate(active):
                self._advance(row, out, i, params.max_new_tokens, last_turn=turn == self.max_assistant_turns - 1)
        return self._output(rows, len(prompts), params.n)

    def _advance(self, row: _Row, out: RolloutOutput, i: int, limit: int, last_turn: bool) -> None:
        """Append row i's turn; run its tool calls unless the turn ended the response."""
        n = int(out.lengths[i])
        room = limit - len(row.ids)
        ids, logprobs = out.response_ids[i, :n].tolist(), out.logprobs[i, :n].tolist()
        row.turns += 1
        if n > room or out.finish_reasons[i] == "length":
            row.extend(ids[:room], logprobs[:room])
            row.finish, row.done = "length", True
            return
        row.extend(ids, logprobs)
        calls = parse_tool_calls(self.tokenizer.decode(ids, skip_special_tokens=False))
        if not calls or last_turn:
            row.finish, row.done = "stop", True
            return
        answers = [self._run(row, call) for call in calls]
        suffix = self.messages.ids(answers)
        if len(suffix) >= limit - len(row.ids):  # no room left to answer after the tool's message
            row.extend(suffix[: limit - len(row.ids)], None)
            row.finish, row.done = "length", True
            return
        row.extend(suffix, None)

    def _run(self, row: _Row, call: ToolCall) -> str:
        row.calls += 1
        if call.error is not None:
            return f"Error: {call.error}"
        tool = self.tools.get(call.name)
        if tool is None:
            return f"Error: no tool named {call.name!r} (available: {', '.join(sorted(self.tools))})"
        start = time.monotonic()
        result = tool.execute(call.arguments)
        row.latency += time.monotonic() - start
        row.successes += int(result.ok)
        row.tool_reward += result.reward
        ids = self.tokenizer(result.text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_tool_response_tokens:
            return self.tokenizer.decode(ids[: self.max_tool_response_tokens]) + "\n...[truncated]"
        return result.text

    def _output(self, rows: list[_Row], num_prompts: int, n: int) -> RolloutOutput:
        width = max((len(r.ids) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.float32)
        logprobs = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, r in enumerate(rows):
            ids[i, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
            mask[i, : len(r.mask)] = torch.tensor(r.mask)
            logprobs[i, : len(r.logprobs)] = torch.tensor(r.logprobs)

        def per_row(values: Iterable[float]) -> torch.Tensor:
            return torch.tensor(list(values), dtype=torch.float32)

        group, sample = grouped(n, num_prompts)
        return RolloutOutput(
            response_ids=ids,
            logprobs=logprobs,
            lengths=torch.tensor([len(r.ids) for r in rows], dtype=torch.long),
            finish_reasons=[r.finish for r in rows],
            group=group,
            sample=sample,
            token_mask=mask,
            row_metrics={
                "turns": per_row(r.turns for r in rows),
                "tool_calls": per_row(r.calls for r in rows),
                "tool_successes": per_row(r.successes for r in rows),
                "tool_latency_s": per_row(r.latency for r in rows),
                "tool_reward": per_row(r.tool_reward for r in rows),
            },
        )

    # The engine's lifecycle, unchanged.
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.engine.update_weights(named_tensors)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def close(self) -> None:
        self.engine.close()
