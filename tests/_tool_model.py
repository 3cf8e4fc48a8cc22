"""A tiny Qwen2 that has been taught (a few hundred SFT steps) to call the calculator once and then
answer with the tool's result, so multi-turn code paths run with a real model and real tools.

Head dim 32 (2 heads) so vLLM's CPU attention accepts it too. The tool's schema is short to keep
prompts small for the tiny byte-level tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import Qwen2ForCausalLM

from npu_rl.agent_tools.chat_template import with_tool_template
from npu_rl.rollout.multi_turn import ToolMessages
from npu_rl.tools import make_tiny_model

TOOL_YAML = """
tools:
  - class_name: calculator
    tool_schema:
      type: function
      function:
        name: calculator
        description: arithmetic
        parameters: {type: object, properties: {expression: {type: string}}}
"""
SCHEMA = {"type": "function", "function": {"name": "calculator", "description": "arithmetic",
          "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}  # fmt: skip
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+3"}}\n</tool_call>'
ANSWER = "The answer is \\boxed{5}"


PAIRS = [(2, 3), (7, 5), (1, 9), (4, 4), (6, 2), (3, 8), (5, 5), (9, 1)]
QUESTIONS = [f"What is {a} plus {b}?" for a, b in PAIRS]


def prompt_ids(tok, question: str) -> list[int]:
    """The question rendered with the calculator's schema, as the trainer renders multi-turn prompts."""
    messages = [{"role": "user", "content": question}]
    text = tok.apply_chat_template(messages, tools=[SCHEMA], add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def write_questions_parquet(path: Path, interaction: str | None = None) -> dict[str, Path]:
    """QUESTIONS as a train/test parquet pair in verl's row schema; `interaction` names a simulated user
    (extra_info.interaction_kwargs, as verl's GSM8K interaction data)."""
    rows = [
        {
            "data_source": "tool_demo",
            "prompt": [{"role": "user", "content": q}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(a + b)},
            "extra_info": {"index": i}
            | (
                {"interaction_kwargs": {"name": interaction, "query": q, "ground_truth": str(a + b)}}
                if interaction
                else {}
            ),
        }
        for i, (q, (a, b)) in enumerate(zip(QUESTIONS, PAIRS, strict=True))
    ]
    path.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        pq.write_table(pa.Table.from_pylist(rows), path / f"{split}.parquet")
    return {"train": path / "train.parquet", "test": path / "test.parquet"}


def build_tool_model(out_dir: Path, tokenizer, steps: int = 250) -> Path:
    """SFT on (short question with the calculator's schema, a call, tool answer "5", final answer)."""
    tok = with_tool_template(tokenizer)
    config = make_tiny_model.qwen2_config(tok, "test")
    config.num_attention_heads, config.num_key_value_heads = 2, 1
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    suffix = ToolMessages(tok, tok.eos_token).ids(["5"])
    call = tok(CALL, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    answer = tok(ANSWER, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    seqs, masks = [], []
    for question in QUESTIONS:
        prompt = prompt_ids(tok, question)
        seqs.append(prompt + call + suffix + answer)
        masks.append([0] * len(prompt) + [1] * len(call) + [0] * len(suffix) + [1] * len(answer))
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    labels = torch.where(torch.tensor([m + [0] * (width - len(m)) for m in masks]) == 1, ids, -100)
    attention = (torch.arange(width)[None] < torch.tensor([len(s) for s in seqs])[:, None]).long()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
    make_tiny_model.save_model_dir(model.eval(), tok, out_dir)
    return out_dir
