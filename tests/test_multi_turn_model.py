"""Multi-turn with a real (tiny, tool-tuned) model: hf rollout, vLLM equality, and GRPO training
with tools through the trainer, including resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _tool_model import TOOL_YAML, build_tool_model, prompt_ids, write_questions_parquet
from test_trainer import make_cfg, run
from transformers import AutoModelForCausalLM, AutoTokenizer

from npu_rl.agent_tools import CalculatorTool
from npu_rl.compute import REFERENCE_PLAN
from npu_rl.rollout import SamplingParams, eos_and_pad_ids
from npu_rl.rollout.hf import HFRollout
from npu_rl.rollout.multi_turn import MultiTurnRollout

QUESTIONS = ["What is 2 plus 3?", "What is 5 plus 6?"]


@pytest.fixture(scope="module")
def tool_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return build_tool_model(tmp_path_factory.mktemp("tool_model"), tiny_tokenizer)


@pytest.fixture(scope="module")
def tok(tool_model_dir):
    return AutoTokenizer.from_pretrained(tool_model_dir)


def _hf_multi_turn(model_dir: Path, tok) -> MultiTurnRollout:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos, pad = eos_and_pad_ids(tok, model)
    return MultiTurnRollout(HFRollout(model, eos, pad, REFERENCE_PLAN), tok, {"calculator": CalculatorTool()}, pad, 3)


@pytest.mark.slow  # teaching the tool model takes ~25 s; the scripted-policy tests in test_multi_turn.py stay quick
def test_hf_multi_turn_greedy_calls_the_calculator_and_answers(tool_model_dir, tok) -> None:
    rollout = _hf_multi_turn(tool_model_dir, tok)
    out = rollout.generate([prompt_ids(tok, q) for q in QUESTIONS], SamplingParams(temperature=0.0, max_new_tokens=150))
    text = tok.decode(out.response_ids[0, : int(out.lengths[0])].tolist())
    assert "<tool_response>\n5\n</tool_response>" in text and text.endswith("\\boxed{5}<|im_end|>")
    assert out.row_metrics["turns"].tolist() == [2.0, 2.0] and out.row_metrics["tool_successes"].tolist() == [1.0, 1.0]
    assert out.decode(tok)[0].count("5") == 1  # the graded text: the policy's tokens, not the tool's "5"


@pytest.mark.vllm
@pytest.mark.slow
def test_hf_and_vllm_multi_turn_give_the_same_tokens_greedy(tool_model_dir, tok) -> None:
    pytest.importorskip("vllm")
    from npu_rl.config import RolloutConfig
    from npu_rl.device import Accelerator
    from npu_rl.distributed import DistInfo
    from npu_rl.rollout.vllm import VLLMRollout

    prompts = [prompt_ids(tok, q) for q in QUESTIONS]
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=120)
    hf = _hf_multi_turn(tool_model_dir, tok).generate(prompts, params, seeds=[7, 8])
    engine = VLLMRollout(
        RolloutConfig(name="vllm", max_num_seqs=8), str(tool_model_dir), tok, Accelerator("cpu"), DistInfo(),
        "float32", max_model_len=512,
    )  # fmt: skip
    try:
        _, pad = eos_and_pad_ids(tok)
        vllm = MultiTurnRollout(engine, tok, {"calculator": CalculatorTool()}, pad, 3).generate(prompts, params, [7, 8])
    finally:
        engine.close()
    assert hf.lengths.tolist() == vllm.lengths.tolist()
    assert torch.equal(hf.response_ids, vllm.response_ids)
    assert torch.equal(hf.response_mask, vllm.response_mask)
    assert hf.row_metrics["tool_calls"].sum() > 0


def _cfg(tmp_path: Path, model_dir: Path, data: dict, *extra: str):
    tools = tmp_path / "tools.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    tools.write_text(TOOL_YAML)
    return make_cfg(
        tmp_path, model_dir, data,
        "rollout.multi_turn.enable=true", f"rollout.multi_turn.tool_config_path={tools}",
        "rollout.multi_turn.max_assistant_turns=3", "rollout.multi_turn.tool_call_bonus=0.1",
        "rollout.multi_turn.failed_call_penalty=0.05", "rollout.max_new_tokens=100", "trainer.test_freq=-1",
        "data.max_prompt_length=512", "data.val_max_samples=-1", *extra,
    )  # fmt: skip


def _train_rows(tmp_path: Path) -> list[dict]:
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "actor/pg_loss" in r]


@pytest.mark.slow
def test_grpo_with_tools_trains_logs_tool_metrics_and_resumes_exactly(tmp_path, tool_model_dir):
    data = write_questions_parquet(tmp_path / "data")
    straight = run(_cfg(tmp_path / "a", tool_model_dir, data))
    rows = _train_rows(tmp_path / "a")
    for key in ("multi_turn/turns/mean", "tool/calls/mean", "tool/success_rate", "tool/latency_s",
                "reward/tool_shaping/mean"):  # fmt: skip
        assert key in rows[-1], key
    assert any(r["tool/calls/mean"] > 0 for r in rows), "the tool-tuned model calls the calculator"
    first = _cfg(tmp_path / "b", tool_model_dir, data)
    first.trainer.total_training_steps = 2
    run(first)
    resumed = run(_cfg(tmp_path / "b", tool_model_dir, data))
    assert resumed.global_step == 4
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    last_a, last_b = rows[-1], _train_rows(tmp_path / "b")[-1]
    for key in ("critic/score/mean", "tool/calls/mean", "multi_turn/turns/mean", "response_length/mean"):
        assert last_a[key] == pytest.approx(last_b[key], abs=1e-6), key


@pytest.mark.slow
def test_grpo_with_a_simulated_user_trains_and_logs_interaction_metrics(tmp_path, tool_model_dir):
    """verl's GSM8K interaction setup: no tools, the user asks again after a wrong answer (once here)."""
    data = write_questions_parquet(tmp_path / "data", interaction="gsm8k")
    interaction = tmp_path / "interaction.yaml"
    interaction.write_text("interaction:\n  - name: gsm8k\n    class_name: gsm8k\n")
    cfg = make_cfg(
        tmp_path, tool_model_dir, data, "rollout.multi_turn.enable=true",
        f"rollout.multi_turn.interaction_config_path={interaction}", "rollout.multi_turn.max_user_turns=1",
        "rollout.multi_turn.max_assistant_turns=3", "rollout.max_new_tokens=100", "trainer.test_freq=-1",
        "data.max_prompt_length=512",
    )  # fmt: skip
    cfg.trainer.total_training_steps = 2
    trainer = run(cfg)
    rows = _train_rows(tmp_path)
    assert len(rows) == 2 and trainer.global_step == 2
    # every row gets at most one reply; a row that ended its first turn without a tool call got it
    assert all(0 < r["interaction/user_turns/mean"] <= 1 for r in rows), rows
    assert all(0 <= r["interaction/score/mean"] <= 1 for r in rows)


@pytest.mark.slow
def test_validation_reports_the_tool_call_rate(tmp_path, tool_model_dir):
    data = write_questions_parquet(tmp_path / "data")
    cfg = _cfg(tmp_path, tool_model_dir, data, "trainer.test_freq=1")
    cfg.trainer.total_training_steps = 1
    run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    tool = {k: v for r in rows for k, v in r.items() if k.startswith("val-aux/") and "/tool/" in k}
    (rate_key,) = [k for k in tool if k.endswith("/tool/call_rate/mean@1")]
    (calls_key,) = [k for k in tool if k.endswith("/tool/calls/mean@1")]
    # greedy validation: the tool-tuned model calls the calculator once for every question
    assert tool[rate_key] == pytest.approx(1.0) and tool[calls_key] == pytest.approx(1.0)
    # verl's val-aux/num_turns: the prompt, the call, the tool message and the answer (4) for every sample
    turns = {k: v for r in rows for k, v in r.items() if k.startswith("val-aux/num_turns/")}
    assert turns == {f"val-aux/num_turns/{s}": pytest.approx(4.0) for s in ("min", "max", "mean")}, turns
