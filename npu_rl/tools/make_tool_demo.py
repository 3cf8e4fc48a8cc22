"""Build the CPU tool-use demo: the arithmetic demo's tiny base, taught to sometimes call the calculator.

GRPO can only raise behaviour the model already produces sometimes (see make_tiny_model). The base
greedy-decodes a bare shortcut answer that is usually wrong, because composing two operations at
once is error-prone for a 1.7M-parameter model; the calculator is exact. A short SFT stage teaches the
tool format on a share of the problems: the assistant calls the calculator with the problem's
expression, the real calculator's answer follows as a tool message (rendered by the chat template,
token for token what the multi-turn rollout appends), and the assistant boxes that answer. The rest
of the answers keep the base's mix of shortcuts and worked solutions, so greedy decoding still
prefers the shortcut while sampling calls the calculator at about the taught share. In a GRPO group
the responses that call the tool are right more often, so the tool-call rate and the greedy accuracy
go up (run/tiny_tool_grpo.sh measures both, before and after).

Writes <data-dir>/{train,test}.parquet (the synthetic problems after a short system prompt in the
spirit of `npu-rl-preprocess-gsm8k --tool-prompt`, whose full text would cost 118 of the tiny tokenizer's
tokens per prompt) and <out-dir> (the model, with a tokenizer whose chat template
renders tools the Qwen2.5 way). Deterministic: fixed seeds and step counts; SFT never sees a test problem.

Usage: npu-rl-make-tool-demo --base-dir assets/models/tiny-base --out-dir assets/models/tiny-tool
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoTokenizer, Qwen2ForCausalLM

from npu_rl.agent_tools import Tool, load_tools
from npu_rl.agent_tools.chat_template import with_tool_template
from npu_rl.cli import UserError, entry_point
from npu_rl.configs import find as find_config
from npu_rl.rollout.multi_turn import ToolMessages
from npu_rl.tools.make_synthetic_math import KINDS, Problem, iter_problems, make_splits, to_row
from npu_rl.tools.make_tiny_model import Stage, collate, held_out_keys, save_model_dir, train_steps

SYSTEM_PROMPT = "Use tools to verify calculations."
TOOL_CONFIG = "tools_calculator"  # npu_rl/configs/tools_calculator.yaml
# The SFT stage: a share of tool-calling answers; the others shortcut (78%) or worked, as the base's stage 2.
TOOL_STAGE = Stage("tool-sft", steps=120, lr=2e-3, shortcut_share=0.78, warmup_steps=10, batch_size=32)
TOOL_SHARE = 0.3


def tool_messages(problem: Problem) -> list[dict[str, str]]:
    """The prompt's chat messages: the tool system prompt, then the problem as the arithmetic demo asks it."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": problem.prompt}]


def write_tool_splits(out_dir: str | Path, n_train: int = 2000, n_test: int = 200, seed: int = 0) -> dict[str, Path]:
    """The arithmetic demo's splits (same seed: the same problems) with the tool system prompt."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, problems in zip(("train", "test"), make_splits(n_train, n_test, seed), strict=True):
        rows = [{**to_row(p, split, i), "prompt": tool_messages(p)} for i, p in enumerate(problems)]
        paths[split] = out_dir / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), paths[split])
    return paths


def expression(problem: Problem) -> str:
    """`a op1 b op2 c`: both templates' operations in order (left to right is also the precedence here)."""
    (a, b, c), (op1, op2) = problem.numbers, KINDS[problem.kind].ops
    return f"{a} {op1} {b} {op2} {c}"


def pick_style(rng: random.Random, tool_share: float, shortcut_share: float) -> str:
    """ "tool" with probability `tool_share`, else "shortcut" with probability `shortcut_share`, else "worked"."""
    if rng.random() < tool_share:
        return "tool"
    return "shortcut" if rng.random() < shortcut_share else "worked"


class ToolSFT:
    """Encodes SFT examples in the multi-turn rollout's exact token layout.

    An example is (ids, prompt length, (start, end) of the tool message or None): the loss covers
    the assistant's tokens only, neither the prompt nor the tool's answer (as GRPO's response mask).
    """

    def __init__(self, tokenizer: Any, tools: dict[str, Tool]) -> None:
        self.tok = tokenizer
        self.calculator = tools["calculator"]
        self.schemas = [t.schema for t in tools.values()]
        self.tool_messages = ToolMessages(tokenizer, tokenizer.eos_token)

    def render(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        return self.tok.apply_chat_template(messages, tools=self.schemas, tokenize=False, **kwargs)

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def example(self, problem: Problem, style: str) -> tuple[list[int], int, tuple[int, int] | None]:
        messages = tool_messages(problem)
        prompt_text = self.render(messages, add_generation_prompt=True)
        prompt = self.ids(prompt_text)
        if style != "tool":
            answer = problem.shortcut() if style == "shortcut" else problem.worked()
            return prompt + self.ids(answer) + [self.tok.eos_token_id], len(prompt), None
        arguments = {"expression": expression(problem)}
        call = {"type": "function", "function": {"name": "calculator", "arguments": arguments}}
        # The expression first, as plain text: the base already starts worked solutions with "a op b", and
        # copying it into the call from right before is easy (measured: calls without it got 0.6% right
        # at T=1 after the same SFT, the operands in the JSON mostly wrong).
        assistant = {"role": "assistant", "content": arguments["expression"], "tool_calls": [call]}
        turn = self.render([*messages, assistant])[len(prompt_text) :]
        eos = self.tok.eos_token
        call_ids = self.ids(turn[: turn.index(eos) + len(eos)])  # what the policy generates, ending at EOS
        result = self.calculator.execute(arguments)
        if not result.ok:
            raise ValueError(f"the calculator refused {expression(problem)!r}: {result.text}")
        suffix = self.tool_messages.ids([result.text])
        answer = [*self.ids(f"The answer is \\boxed{{{result.text}}}."), self.tok.eos_token_id]
        start = len(prompt) + len(call_ids)
        return prompt + call_ids + suffix + answer, len(prompt), (start, start + len(suffix))

    def batch(
        self, problems: Iterator[Problem], rng: random.Random, size: int, tool_share: float, shortcut_share: float
    ) -> dict[str, torch.Tensor]:
        """A collated batch of `size` problems, answered in the styles `pick_style` draws."""
        examples = []
        for problem in (next(problems) for _ in range(size)):
            examples.append(self.example(problem, pick_style(rng, tool_share, shortcut_share)))
        inputs = collate([(ids, n_prompt) for ids, n_prompt, _ in examples], self.tok.pad_token_id)
        for row, (_, _, span) in enumerate(examples):
            if span is not None:
                inputs["labels"][row, span[0] : span[1]] = -100
        return inputs


def build_tool_model(
    base_dir: str | Path,
    out_dir: str | Path,
    test_parquet: str | Path,
    stage: Stage = TOOL_STAGE,
    tool_share: float = TOOL_SHARE,
    seed: int = 0,
    log_every: int = 50,
) -> Path:
    """The base model + `stage` of tool-format SFT, saved with the tool chat template on its tokenizer."""
    tok = with_tool_template(AutoTokenizer.from_pretrained(base_dir))
    model = Qwen2ForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if len(tok) > model.get_input_embeddings().num_embeddings:  # <tool_call>, </tool_call> need rows
        model.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
    torch.manual_seed(seed)
    sft = ToolSFT(tok, load_tools(str(find_config(TOOL_CONFIG))))
    problems = iter_problems(seed + 1, exclude=held_out_keys(test_parquet))
    rng = random.Random(seed + 2)
    train_steps(
        model, stage, lambda: sft.batch(problems, rng, stage.batch_size, tool_share, stage.shortcut_share), log_every
    )
    return save_model_dir(model.eval(), tok, out_dir)


@entry_point("npu-rl-make-tool-demo")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-dir", default="assets/models/tiny-base", help="built by npu-rl-make-tiny-model")
    parser.add_argument("--out-dir", default="assets/models/tiny-tool")
    parser.add_argument("--data-dir", default="assets/data/synthetic_tool", help="train/test parquet are written here")
    parser.add_argument("--steps", type=int, default=TOOL_STAGE.steps, help="SFT steps")
    parser.add_argument("--tool-share", type=float, default=TOOL_SHARE, help="share of SFT answers that call the tool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--num-threads", type=int, default=len(os.sched_getaffinity(0)), help="default: the cores this process may use"
    )
    args = parser.parse_args(argv)
    if not (Path(args.base_dir) / "config.json").is_file():
        raise UserError(f"{args.base_dir} is not a model folder: build it with `npu-rl-make-tiny-model`")
    if not 0.0 <= args.tool_share <= 1.0:
        raise UserError(f"--tool-share {args.tool_share}: expected a share between 0 and 1")
    torch.set_num_threads(args.num_threads)
    start = time.perf_counter()
    paths = write_tool_splits(args.data_dir, seed=args.seed)
    print(f"data: {paths['train']}, {paths['test']}")
    stage = replace(TOOL_STAGE, steps=args.steps)
    out_dir = build_tool_model(args.base_dir, args.out_dir, paths["test"], stage, args.tool_share, args.seed)
    print(f"saved {out_dir} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
