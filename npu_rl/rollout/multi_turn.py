"""Multi-turn rollout: the policy generates until it calls a tool or ends its turn; the calls are
executed, their answers appended as tool messages rendered by the tokenizer's chat template, and
generation continues, up to `max_assistant_turns` turns within the response token budget.

Wraps any `RolloutEngine` (hf or vLLM): each turn is one `engine.generate` call on the active rows'
extended contexts with n=1 and a seed derived from (prompt seed, sample, turn), so a row's tokens
depend on its own seed only, whatever else is in the batch, on any backend and across a resume.
Tool-answer tokens are part of the response (the policy attends to them) but `token_mask` is 0
there: they are out of the loss, their log-probs are not counted, and the grader does not see them.

Tool calls are parsed in Qwen2.5's format, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
(what its chat template teaches when given `tools=`). Of one assistant turn's calls the first
`max_parallel_calls` are run (verl's name and default, 1); verl drops the rest silently, here each is
answered with an error so the model hears why. The calls of all rows in a turn run at once on up to
`max_concurrent_calls` threads (a sandboxed call is its own process, so they use several cores), in
a fixed order of results: what a row sees does not depend on the concurrency.

With interactions (verl's simulated user turns, npu_rl.agent_tools.interaction) a turn that calls no
tool goes to the row's interaction, whose reply is appended as a user message (token_mask 0, like a
tool answer) and generation continues, until the interaction ends the conversation or
`max_user_turns` replies or `max_assistant_turns` turns were used, as verl's tool agent loop does.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from npu_rl.agent_tools import Tool, ToolResult
from npu_rl.agent_tools.interaction import Interaction, pick
from npu_rl.rollout.base import RolloutEngine, RolloutOutput, SamplingParams, grouped
from reward.limits import GradeTimeout, call_bounded

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

    def __init__(self, tokenizer: Any, eos_text: str, chat_kwargs: dict[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.chat_kwargs = dict(chat_kwargs or {})  # data.apply_chat_template_kwargs: prompts and tool turns alike
        base = tokenizer.apply_chat_template(_RENDER_BASE, tokenize=False, **self.chat_kwargs)
        if eos_text not in base:
            raise ValueError(f"the chat template does not end assistant turns with {eos_text!r}")
        self.base = base
        self.cut = base.rindex(eos_text) + len(eos_text)  # right after the assistant's end-of-turn token

    def ids(self, answers: Sequence[str], role: str = "tool") -> list[int]:
        """Tokens from the end of the assistant turn through the next assistant header: tool answers, or
        a simulated user's message (`role="user"`)."""
        messages = _RENDER_BASE + [{"role": role, "content": a} for a in answers]
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.chat_kwargs
        )
        if not text.startswith(self.base[: self.cut]):
            raise ValueError(f"the chat template renders earlier messages differently once a {role} message follows")
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
    tool_turns: int = 0  # tool messages appended whole (verl counts them as user turns)
    calls: int = 0
    successes: int = 0
    latency: float = 0.0
    tool_reward: float = 0.0
    interaction: Interaction | None = None
    interaction_kwargs: dict[str, Any] = field(default_factory=dict)
    chat: list[dict[str, str]] = field(default_factory=list)  # the turns after the prompt, for the interaction
    user_turns: int = 0
    awaiting_user: bool = False  # this turn ended without tool calls and goes to the interaction
    interaction_timeouts: int = 0
    score: float = 0.0  # the interaction's last turn score

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
        max_parallel_calls: int = 1,
        max_concurrent_calls: int = 0,
        chat_kwargs: dict[str, Any] | None = None,
        interactions: dict[str, Interaction] | None = None,
        max_user_turns: int | None = None,
        interaction_timeout_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.tools = tools
        self.pad_token_id = pad_token_id
        self.max_assistant_turns = max_assistant_turns
        self.max_tool_response_tokens = max_tool_response_tokens
        self.max_parallel_calls = max_parallel_calls
        self.max_concurrent_calls = max_concurrent_calls or len(os.sched_getaffinity(0))
        self.messages = ToolMessages(tokenizer, tokenizer.eos_token, chat_kwargs)
        self.interactions = interactions or {}
        self.max_user_turns = max_user_turns  # None: bounded by the assistant turns only (verl's null)
        self.interaction_timeout_s = interaction_timeout_s

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        seeds: list[int] | None = None,
        interaction_kwargs: Sequence[Any] | None = None,
    ) -> RolloutOutput:
        """`interaction_kwargs`: per prompt, its row's extra_info.interaction_kwargs (None: no user turns)."""
        rows = []
        for g, p in enumerate(prompts):
            kwargs = interaction_kwargs[g] if interaction_kwargs is not None and self.interactions else None
            interaction = pick(self.interactions, kwargs, f"prompt {g} of the batch")
            for s in range(params.n):
                row = _Row(list(p), None if seeds is None else seeds[g], s, interaction=interaction)
                row.interaction_kwargs = dict(kwargs or {})
                rows.append(row)
        for turn in range(self.max_assistant_turns):
            active = [r for r in rows if not r.done]
            if not active:
                break
            budget = max(params.max_new_tokens - len(r.ids) for r in active)
            turn_seeds = None if seeds is None else [turn_seed(r.seed, r.sample, turn) for r in active]
            out = self.engine.generate(
                [r.context for r in active], replace(params, n=1, max_new_tokens=budget), seeds=turn_seeds
            )
            last_turn = turn == self.max_assistant_turns - 1
            pending = [
                (row, self._append_turn(row, out, i, params.max_new_tokens, last_turn)) for i, row in enumerate(active)
            ]
            self._answer([(row, calls) for row, calls in pending if calls], params.max_new_tokens)
            self._interact([row for row in active if row.awaiting_user], params.max_new_tokens)
        return self._output(rows, len(prompts), params.n)

    def _append_turn(self, row: _Row, out: RolloutOutput, i: int, limit: int, last_turn: bool) -> list[ToolCall]:
        """Append row i's turn; return the tool calls to answer (none when the turn ended the response)."""
        n = int(out.lengths[i])
        room = limit - len(row.ids)
        ids, logprobs = out.response_ids[i, :n].tolist(), out.logprobs[i, :n].tolist()
        row.turns += 1
        if n > room or out.finish_reasons[i] == "length":
            row.extend(ids[:room], logprobs[:room])
            row.finish, row.done = "length", True
            return []
        row.extend(ids, logprobs)
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        row.chat.append({"role": "assistant", "content": self.tokenizer.decode(ids, skip_special_tokens=True)})
        calls = parse_tool_calls(text)
        if calls and not last_turn:
            return calls
        turns_left = self.max_user_turns is None or row.user_turns < self.max_user_turns
        row.awaiting_user = not calls and not last_turn and row.interaction is not None and turns_left
        row.finish, row.done = "stop", not row.awaiting_user
        return []

    def _interact(self, rows: list[_Row], limit: int) -> None:
        """Each row's interaction replies; the reply is appended as a user message (also the last one,
        as verl does) and the row goes on generating unless the interaction ended it. A reply reads model
        output, so it is bounded: over `interaction_timeout_s` the conversation ends where it is."""
        for row in rows:
            row.awaiting_user = False
            try:
                reply = call_bounded(
                    lambda row=row: row.interaction.respond(list(row.chat), row.interaction_kwargs),
                    self.interaction_timeout_s,
                )
            except GradeTimeout:
                row.interaction_timeouts += 1
                row.done = True
                continue
            row.user_turns += 1
            row.score = float(reply.score)
            row.chat.append({"role": "user", "content": reply.message})
            suffix = self.messages.ids([reply.message], role="user")
            if len(suffix) >= limit - len(row.ids):  # no room left to answer after the message
                row.extend(suffix[: limit - len(row.ids)], None)
                row.finish, row.done = "length", True
                continue
            row.extend(suffix, None)
            row.done = reply.done

    def _answer(self, pending: list[tuple[_Row, list[ToolCall]]], limit: int) -> None:
        """Run this turn's calls of every row at once (each row's first `max_parallel_calls`), then
        append each row's tool message, or end the row where the message leaves no room to answer."""
        jobs = [call for _, calls in pending for call in calls[: self.max_parallel_calls]]
        workers = min(self.max_concurrent_calls, len(jobs))
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="npu_rl-tool") as pool:
                done = list(pool.map(self._execute, jobs))
        else:
            done = [self._execute(call) for call in jobs]
        results = iter(done)  # in job order, whatever order the calls finished in
        refused = f"Error: only {self.max_parallel_calls} tool call(s) per turn are run; this one was not."
        for row, calls in pending:
            row.calls += len(calls)  # a refused call counts as a (failed) call
            answers = []
            for _ in calls[: self.max_parallel_calls]:
                result, seconds = next(results)
                row.latency += seconds
                row.successes += int(result.ok)
                row.tool_reward += result.reward
                answers.append(self._clip(result.text))
            answers += [refused] * (len(calls) - len(answers))
            row.chat += [{"role": "tool", "content": a} for a in answers]
            suffix = self.messages.ids(answers)
            if len(suffix) >= limit - len(row.ids):  # no room left to answer after the tool's message
                row.extend(suffix[: limit - len(row.ids)], None)
                row.finish, row.done = "length", True
            else:
                row.extend(suffix, None)
                row.tool_turns += 1

    def _execute(self, call: ToolCall) -> tuple[ToolResult, float]:
        """One call's result and its seconds; runs on a worker thread (tools keep no per-call state)."""
        if call.error is not None:
            return ToolResult(f"Error: {call.error}", ok=False), 0.0
        tool = self.tools.get(call.name)
        if tool is None:
            message = f"Error: no tool named {call.name!r} (available: {', '.join(sorted(self.tools))})"
            return ToolResult(message, ok=False), 0.0
        start = time.monotonic()
        result = tool.execute(call.arguments)
        return result, time.monotonic() - start

    def _clip(self, text: str) -> str:
        """A tool answer cut to `max_tool_response_tokens` (on the caller's thread: one tokenizer)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_tool_response_tokens:
            return self.tokenizer.decode(ids[: self.max_tool_response_tokens]) + "\n...[truncated]"
        return text

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
                # verl's num_turns: the prompt, every assistant turn, tool message and simulated user reply
                "num_turns": per_row(1 + r.turns + r.tool_turns + r.user_turns for r in rows),
                "tool_calls": per_row(r.calls for r in rows),
                "tool_successes": per_row(r.successes for r in rows),
                "tool_latency_s": per_row(r.latency for r in rows),
                "tool_reward": per_row(r.tool_reward for r in rows),
                **(
                    {
                        "user_turns": per_row(r.user_turns for r in rows),
                        "interaction_score": per_row(r.score for r in rows),
                        "interaction_timeouts": per_row(r.interaction_timeouts for r in rows),
                    }
                    if self.interactions
                    else {}
                ),
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
