"""Multi-turn rollout with real tools and a real (Qwen2.5-style) chat template; the policy is a
scripted engine that answers each turn with given text, so the conversation is known exactly."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import threading
import time
from typing import Any, ClassVar

import pytest
import torch

from npu_rl import actor
from npu_rl.agent_tools import CalculatorTool, PythonTool, Tool, ToolResult
from npu_rl.agent_tools.chat_template import with_tool_template
from npu_rl.agent_tools.interaction import AnswerFeedback, load_interactions
from npu_rl.data import PromptRecord
from npu_rl.rollout import RolloutBatch, SamplingParams, generate
from npu_rl.rollout.base import RolloutOutput, grouped
from npu_rl.rollout.multi_turn import MultiTurnRollout, ToolMessages, parse_tool_calls

CALC = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12*7"}}\n</tool_call>'
CODE = '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "print(84 + 16)"}}\n</tool_call>'
SCRIPT = ["Let me check." + CALC, "And verify." + CODE, "So \\boxed{84}"]


class ScriptedEngine:
    """A RolloutEngine whose turn k (counted from the tool answers already in the context) is
    SCRIPT[k] followed by EOS; every token gets logprob -0.5. Records the contexts it was given."""

    def __init__(self, tokenizer, script: list[str]) -> None:
        self.tok, self.script, self.contexts, self.seeds = tokenizer, script, [], []

    def generate(self, prompts, params, seeds=None) -> RolloutOutput:
        self.contexts.append([list(p) for p in prompts])
        self.seeds.append(seeds)
        rows = []
        for p in prompts:
            turn = self.tok.decode(p).count("<tool_response>")
            text = self.script[min(turn, len(self.script) - 1)]
            ids = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            for _ in range(params.n):
                rows.append(ids[: params.max_new_tokens])
        width = max(len(r) for r in rows)
        out_ids = torch.full((len(rows), width), self.tok.pad_token_id)
        for i, r in enumerate(rows):
            out_ids[i, : len(r)] = torch.tensor(r)
        lengths = torch.tensor([len(r) for r in rows])
        logprobs = torch.where(torch.arange(width)[None] < lengths[:, None], -0.5, 0.0)
        reasons = ["stop" if r[-1] == self.tok.eos_token_id else "length" for r in rows]
        return RolloutOutput(out_ids, logprobs, lengths, reasons, *grouped(params.n, len(prompts)))

    def update_weights(self, named_tensors) -> None: ...
    def sleep(self) -> None: ...
    def wake_up(self) -> None: ...
    def close(self) -> None: ...


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return with_tool_template(tiny_tokenizer)


@pytest.fixture(scope="module")
def tools():
    return {"calculator": CalculatorTool(), "code_interpreter": PythonTool({"timeout_s": 5})}


def _record(tok, tools, index: int = 0) -> PromptRecord:
    messages = [{"role": "system", "content": "Use tools to verify."}, {"role": "user", "content": "What is 12*7?"}]
    text = tok.apply_chat_template(messages, tools=[t.schema for t in tools.values()], add_generation_prompt=True,
                                   tokenize=False)  # fmt: skip
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return PromptRecord(index, ids, text, messages, "gsm8k", "84", "math", {}, "inline", index)


def test_chat_template_round_trip_of_a_tool_call_and_answer(tok) -> None:
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "12*7"}}}
    base = [{"role": "user", "content": "What is 12*7?"}]
    assistant = {"role": "assistant", "content": "Let me check.", "tool_calls": [call]}
    before = tok.apply_chat_template(base, tokenize=False, add_generation_prompt=True)
    after_call = tok.apply_chat_template([*base, assistant], tokenize=False)
    turn = after_call[len(before) :]
    (parsed,) = parse_tool_calls(turn)  # what the template teaches is what the rollout parses
    assert (parsed.name, parsed.arguments, parsed.error) == ("calculator", {"expression": "12*7"}, None)
    full = tok.apply_chat_template([*base, assistant, {"role": "tool", "content": "84"}], tokenize=False,
                                   add_generation_prompt=True)  # fmt: skip
    # Generated tokens end at EOS; the tool message continues from there up to the next assistant header.
    generated = turn[: turn.index(tok.eos_token) + len(tok.eos_token)]
    suffix = tok.decode(ToolMessages(tok, tok.eos_token).ids(["84"]))
    assert before + generated + suffix == full
    assert "<tool_response>\n84\n</tool_response>" in suffix and suffix.endswith("<|im_start|>assistant\n")


def test_tool_answers_follow_the_chat_template_kwargs(tok) -> None:
    """data.apply_chat_template_kwargs (Qwen3's enable_thinking) shape the next assistant header too."""
    switch = copy.deepcopy(tok)
    switch.chat_template += (
        "{% if add_generation_prompt and enable_thinking is defined and not enable_thinking %}"
        "<think>\n\n</think>\n\n{% endif %}"
    )
    no_thinking = switch.decode(ToolMessages(switch, tok.eos_token, {"enable_thinking": False}).ids(["84"]))
    assert no_thinking.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert switch.decode(ToolMessages(switch, tok.eos_token).ids(["84"])).endswith("<|im_start|>assistant\n")


def test_parse_tool_calls_reports_malformed_calls() -> None:
    text = '<tool_call>{"name": "x", "arguments": "{\\"a\\": 1}"}</tool_call>'
    calls = parse_tool_calls(text + "<tool_call>{oops</tool_call><tool_call>[1]</tool_call>")
    assert calls[0].name == "x" and calls[0].arguments == {"a": 1} and calls[0].error is None
    assert "JSON" in calls[1].error and "name" in calls[2].error


def test_scripted_multi_turn_rollout_runs_real_tools_and_masks_their_answers(tok, tools) -> None:
    engine = ScriptedEngine(tok, SCRIPT)
    rollout = MultiTurnRollout(engine, tok, tools, tok.pad_token_id, max_assistant_turns=5)
    record = _record(tok, tools)
    batch = generate(rollout, [record], SamplingParams(n=2, max_new_tokens=400), seeds=[123])
    assert isinstance(batch, RolloutBatch) and batch.group.tolist() == [0, 0] and batch.sample.tolist() == [0, 1]
    assert len(engine.contexts) == 3  # three assistant turns, two tool rounds
    n = int(batch.lengths[0])
    ids, mask = batch.response_ids[0, :n].tolist(), batch.response_mask[0, :n]
    text = tok.decode(ids)
    assert "<tool_response>\n84\n</tool_response>" in text and "<tool_response>\n100\n</tool_response>" in text
    # Policy tokens are exactly the scripted turns; every other response token is a tool message.
    policy = [t for t, m in zip(ids, mask.tolist(), strict=True) if m]
    expected = []
    for turn in SCRIPT:
        expected += tok(turn, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert policy == expected
    assert 0 < int((mask == 0).sum()) < n
    assert torch.all(batch.logprobs[0, :n][mask == 0] == 0) and torch.all(batch.logprobs[0, :n][mask == 1] == -0.5)
    # The engine saw the tool's answer before its next turn.
    assert tok.decode(engine.contexts[1][0]).endswith("84\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    # Graded text holds the policy's words only, not the tool answers.
    graded = batch.decode(tok)[0]
    assert "\\boxed{84}" in graded and "100" not in graded.replace("84 + 16", "")
    assert batch.row_metrics["turns"].tolist() == [3.0, 3.0]
    assert batch.row_metrics["num_turns"].tolist() == [6.0, 6.0]  # verl's: prompt + 3 assistant + 2 tool turns
    assert batch.row_metrics["tool_calls"].tolist() == [2.0, 2.0]
    assert batch.row_metrics["tool_successes"].tolist() == [2.0, 2.0]
    # Per-row seeds: each (prompt seed, sample, turn) its own, the same on a rerun.
    assert len(set(engine.seeds[0])) == 2 and engine.seeds[0] != engine.seeds[1]
    again = ScriptedEngine(tok, SCRIPT)
    generate(MultiTurnRollout(again, tok, tools, tok.pad_token_id), [record], SamplingParams(n=2, max_new_tokens=400),
             seeds=[123])  # fmt: skip
    assert again.seeds == engine.seeds
    # The policy batch attends to tool answers but keeps them out of the loss.
    pb = actor.build_policy_batch(batch, tok.pad_token_id)
    assert torch.equal(pb.response_mask, batch.response_mask)
    assert int(pb.attention_mask[0, -batch.response_ids.shape[1] :].sum()) == n
    sub = batch.select([1])
    assert torch.equal(sub.token_mask, batch.token_mask[1:]) and sub.row_metrics["turns"].tolist() == [3.0]


def test_turn_limit_and_token_budget(tok, tools) -> None:
    record = _record(tok, tools)
    one = ScriptedEngine(tok, SCRIPT)
    batch = generate(MultiTurnRollout(one, tok, tools, tok.pad_token_id, max_assistant_turns=1), [record],
                     SamplingParams(max_new_tokens=400), seeds=[1])  # fmt: skip
    assert len(one.contexts) == 1 and batch.finish_reasons == ["stop"]  # the last turn's call is not run
    assert batch.row_metrics["tool_calls"].tolist() == [0.0] and bool(batch.response_mask.all())
    first_turn = len(tok(SCRIPT[0], add_special_tokens=False)["input_ids"]) + 1
    tight = ScriptedEngine(tok, SCRIPT)
    batch = generate(MultiTurnRollout(tight, tok, tools, tok.pad_token_id), [record],
                     SamplingParams(max_new_tokens=first_turn + 5), seeds=[1])  # fmt: skip
    assert batch.finish_reasons == ["length"] and int(batch.lengths[0]) == first_turn + 5
    assert batch.truncated == [True]
    assert batch.row_metrics["num_turns"].tolist() == [2.0]  # a cut tool message is no turn (verl's count)


def test_unknown_tool_and_bad_arguments_are_answered_as_errors(tok, tools) -> None:
    script = ['<tool_call>{"name": "search", "arguments": {}}</tool_call>', "done"]
    engine = ScriptedEngine(tok, script)
    batch = generate(MultiTurnRollout(engine, tok, tools, tok.pad_token_id), [_record(tok, tools)],
                     SamplingParams(max_new_tokens=300), seeds=[1])  # fmt: skip
    text = tok.decode(batch.response_ids[0, : int(batch.lengths[0])].tolist())
    assert "no tool named 'search'" in text
    assert batch.row_metrics["tool_calls"].tolist() == [1.0] and batch.row_metrics["tool_successes"].tolist() == [0.0]


def test_calls_beyond_max_parallel_calls_are_answered_with_an_error(tok, tools) -> None:
    record = _record(tok, tools)
    texts = {}
    for limit in (1, 2):
        engine = ScriptedEngine(tok, ["Two at once." + CALC + CODE, "So \\boxed{84}"])
        rollout = MultiTurnRollout(engine, tok, tools, tok.pad_token_id, max_parallel_calls=limit)
        batch = generate(rollout, [record], SamplingParams(max_new_tokens=400), seeds=[1])
        texts[limit] = tok.decode(batch.response_ids[0, : int(batch.lengths[0])].tolist())
        assert batch.row_metrics["tool_calls"].tolist() == [2.0]  # a refused call still counts as a call
        assert batch.row_metrics["tool_successes"].tolist() == [float(limit)]
    # verl's default runs the first call only; the second is answered, not silently dropped.
    assert "<tool_response>\n84\n</tool_response>" in texts[1] and "\n100\n" not in texts[1]
    assert "only 1 tool call(s) per turn are run" in texts[1]
    assert "<tool_response>\n84\n</tool_response>" in texts[2] and "<tool_response>\n100\n</tool_response>" in texts[2]


class _Rendezvous(Tool):
    """Answers only once `parties` calls are inside execute at the same time (a barrier): sequential
    execution breaks the barrier after its timeout and the call raises."""

    default_schema: ClassVar[dict[str, Any]] = {"type": "function", "function": {"name": "echo"}}

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=20)

    def execute(self, args: dict[str, Any]) -> ToolResult:
        self.barrier.wait()
        return ToolResult(f"echo {args['value']}", ok=True)


class _EchoEngine(ScriptedEngine):
    """Each prompt's first turn calls `echo` with the number its question asks about, then answers."""

    def generate(self, prompts, params, seeds=None) -> RolloutOutput:
        self.script = []  # rebuilt per prompt below
        outs = []
        for p in prompts:
            text = self.tok.decode(p)
            value = re.findall(r"What is (\d+)\?", text)[-1]
            call = '<tool_call>{"name": "echo", "arguments": {"value": "' + value + '"}}</tool_call>'
            self.script = [call, "done"]
            outs.append(super().generate([p], params, None))
        return _stack(outs, self.tok.pad_token_id)


def _stack(outs: list[RolloutOutput], pad: int) -> RolloutOutput:
    width = max(o.response_ids.shape[1] for o in outs)
    ids = torch.cat(
        [torch.nn.functional.pad(o.response_ids, (0, width - o.response_ids.shape[1]), value=pad) for o in outs]
    )
    logprobs = torch.cat([torch.nn.functional.pad(o.logprobs, (0, width - o.logprobs.shape[1])) for o in outs])
    reasons = [r for o in outs for r in o.finish_reasons]
    return RolloutOutput(ids, logprobs, torch.cat([o.lengths for o in outs]), reasons, *grouped(1, len(outs)))


def test_a_turns_calls_run_at_once_and_each_row_gets_its_own_answer(tok) -> None:
    values = [31, 42, 53, 64]
    records = []
    for i, v in enumerate(values):
        messages = [{"role": "user", "content": f"What is {v}?"}]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        records.append(PromptRecord(i, ids, text, messages, "gsm8k", str(v), "math", {}, "inline", i))
    engine = _EchoEngine(tok, ["unused"])
    tools = {"echo": _Rendezvous(parties=len(values))}
    rollout = MultiTurnRollout(engine, tok, tools, tok.pad_token_id, max_concurrent_calls=len(values))
    batch = generate(rollout, records, SamplingParams(max_new_tokens=200), seeds=[1, 2, 3, 4])
    for row, v in enumerate(values):
        text = tok.decode(batch.response_ids[row, : int(batch.lengths[row])].tolist())
        assert f"<tool_response>\necho {v}\n</tool_response>" in text  # its own call's answer, in row order
    assert batch.row_metrics["tool_successes"].tolist() == [1.0] * len(values)


def test_gsm8k_tool_prompt_option_adds_the_system_message(tmp_path) -> None:
    import pyarrow.parquet as pq

    from npu_rl.tools import preprocess_gsm8k

    rows = [{"question": "Tom has 3 boxes of 4 pens. How many pens?", "answer": "3*4=12\n#### 12"}]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = [str(tmp_path / "train.jsonl"), str(tmp_path / "test.jsonl")]
    assert preprocess_gsm8k.main(["--input", *files, "--output-dir", str(tmp_path / "out"), "--tool-prompt"]) == 0
    (row,) = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    system, user = row["prompt"]
    assert system == {"role": "system", "content": preprocess_gsm8k.TOOL_SYSTEM_PROMPT}
    assert "use tools to verify calculations" in system["content"] and user["role"] == "user"
    assert row["reward_model"]["ground_truth"] == "12"
    assert "interaction_kwargs" not in row["extra_info"]
    assert (
        preprocess_gsm8k.main(["--input", *files, "--output-dir", str(tmp_path / "w"), "--interaction", "gsm8k"]) == 0
    )
    (row,) = pq.read_table(tmp_path / "w" / "train.parquet").to_pylist()
    assert row["extra_info"]["interaction_kwargs"] == {
        "name": "gsm8k",
        "query": rows[0]["question"],
        "ground_truth": "12",
    }


def test_tool_shaping_is_capped_and_off_by_default() -> None:
    from npu_rl.config import MultiTurnConfig
    from npu_rl.metrics import StepStats
    from npu_rl.rollout.tool_metrics import record_tool_metrics, tool_shaping

    rows = {
        "turns": torch.tensor([1.0, 3.0, 5.0]),
        "num_turns": torch.tensor([2.0, 6.0, 10.0]),
        "tool_calls": torch.tensor([0.0, 2.0, 4.0]),
        "tool_successes": torch.tensor([0.0, 1.0, 4.0]),
        "tool_latency_s": torch.tensor([0.0, 0.5, 1.5]),
        "tool_reward": torch.tensor([0.0, 0.0, 0.0]),
    }
    assert tool_shaping(rows, MultiTurnConfig()) is None
    cfg = MultiTurnConfig(tool_call_bonus=0.1, failed_call_penalty=0.3, shaping_cap=0.25)
    assert torch.allclose(tool_shaping(rows, cfg), torch.tensor([0.0, 0.1 - 0.3, 0.25]))
    assert tool_shaping({}, cfg) is None  # a single-turn rollout
    stats = StepStats()
    record_tool_metrics(stats, rows)
    metrics = stats.reduce()
    assert metrics["tool/calls/mean"] == pytest.approx(2.0) and metrics["multi_turn/turns/mean"] == pytest.approx(3.0)
    assert metrics["tool/success_rate"] == pytest.approx(5 / 6) and metrics["tool/latency_s"] == pytest.approx(2 / 6)
    assert metrics["tool/call_rate"] == pytest.approx(2 / 3)
    assert (metrics["num_turns/mean"], metrics["num_turns/max"], metrics["num_turns/min"]) == pytest.approx((6, 10, 2))


# ----------------------------------------------------------------------------------------------
# Simulated user turns (verl's interactions)

INTERACTION_YAML = """
interaction:
  - name: gsm8k
    class_name: verl.interactions.gsm8k_interaction.Gsm8kInteraction
    config: {}
"""


class RetryEngine(ScriptedEngine):
    """Answers 80 first, then 84 after each "try again" the simulated user sent."""

    def generate(self, prompts, params, seeds=None) -> RolloutOutput:
        self.contexts.append([list(p) for p in prompts])
        outs = []
        for p in prompts:
            retries = self.tok.decode(p).count("try again")
            self.script = ["So the answer is 80. #### 80", "So the answer is 84. #### 84"][min(retries, 1) :]
            outs.append(ScriptedEngine.generate(self, [p], params, seeds))
        return _stack(outs, self.tok.pad_token_id)


def _interacting(tok, tmp_path, **kwargs) -> MultiTurnRollout:
    path = tmp_path / "interaction.yaml"
    path.write_text(INTERACTION_YAML)
    interactions = load_interactions(path)
    assert isinstance(interactions["gsm8k"], AnswerFeedback)
    return MultiTurnRollout(RetryEngine(tok, []), tok, {}, tok.pad_token_id, interactions=interactions, **kwargs)


def test_a_simulated_user_asks_again_until_the_answer_is_right(tok, tmp_path) -> None:
    rollout = _interacting(tok, tmp_path)
    kwargs = {"name": "gsm8k", "query": "What is 12*7?", "ground_truth": "84"}
    with_user = dataclasses.replace(_record(tok, {}, 0), extra_info={"interaction_kwargs": kwargs})
    alone = _record(tok, {}, 1)
    batch = generate(rollout, [with_user, alone], SamplingParams(n=1, max_new_tokens=200), seeds=[1, 2])
    text = tok.decode(batch.response_ids[0, : int(batch.lengths[0])])
    # verl's gsm8k interaction: the wrong answer gets the retry message, the right one the closing message
    assert text.index("#### 80") < text.index(AnswerFeedback.RETRY) < text.index("#### 84")
    assert text.rstrip().endswith(AnswerFeedback.CORRECT + "<|im_end|>\n<|im_start|>assistant")
    assert batch.row_metrics["user_turns"].tolist() == [2.0, 0.0]
    assert batch.row_metrics["interaction_score"].tolist() == [1.0, 0.0]
    assert batch.row_metrics["turns"].tolist() == [2.0, 1.0] and batch.finish_reasons == ["stop", "stop"]
    assert batch.row_metrics["num_turns"].tolist() == [5.0, 2.0]  # the user's replies count, as in verl
    # the user's messages are out of the loss; what the policy wrote is in
    mask = batch.token_mask[0, : int(batch.lengths[0])]
    policy = tok.decode(batch.response_ids[0, : int(batch.lengths[0])][mask.bool()])
    assert "#### 80" in policy and "#### 84" in policy and "try again" not in policy and "correct!" not in policy
    assert "try again" not in tok.decode(batch.response_ids[1, : int(batch.lengths[1])])  # no kwargs: no user


def test_user_turns_stop_at_max_user_turns_and_at_the_last_assistant_turn(tok, tmp_path) -> None:
    # no name: the only interaction
    record = dataclasses.replace(_record(tok, {}, 0), extra_info={"interaction_kwargs": {"ground_truth": "84"}})
    params = SamplingParams(n=1, max_new_tokens=200)
    once = generate(_interacting(tok, tmp_path, max_user_turns=1), [record], params, seeds=[1])
    assert once.row_metrics["user_turns"].tolist() == [1.0] and once.row_metrics["turns"].tolist() == [2.0]
    assert AnswerFeedback.CORRECT not in tok.decode(once.response_ids[0])  # the second answer ends the response
    single = generate(_interacting(tok, tmp_path, max_assistant_turns=1), [record], params, seeds=[1])
    assert single.row_metrics["user_turns"].tolist() == [0.0]


def test_interaction_config_and_kwargs_errors_name_what_to_fix(tok, tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("interaction:\n  - class_name: no_such_interaction\n")
    with pytest.raises(ValueError, match=r"interaction\[0\]\.class_name.*gsm8k"):
        load_interactions(path)
    rollout = _interacting(tok, tmp_path)
    kwargs = {"name": "weather", "ground_truth": "84"}
    record = dataclasses.replace(_record(tok, {}, 0), extra_info={"interaction_kwargs": kwargs})
    with pytest.raises(ValueError, match=r"prompt 0 of the batch: .*name='weather' is not in the interaction config"):
        generate(rollout, [record], SamplingParams(n=1, max_new_tokens=50), seeds=[1])


def test_rows_naming_an_unknown_interaction_stop_the_run_before_any_compute(tmp_path, tok) -> None:
    from _tool_model import write_questions_parquet

    from npu_rl.config import load_config
    from npu_rl.data import DataError, build_datasets
    from npu_rl.rollout import dataset_options

    data = write_questions_parquet(tmp_path / "data", interaction="weather")
    cfg = load_config(None, ["model.path=m", f"data.train_files=[{data['train']}]", "rollout.multi_turn.enable=true",
                             "rollout.multi_turn.interaction_config_path=interaction_gsm8k"])  # fmt: skip
    options = dataset_options(cfg)
    assert options == {"tools": None, "interactions": ["gsm8k"]}
    with pytest.raises(DataError, match=r"train\.parquet rows 0, 1, .* column extra_info: .*name=.weather. is not in"):
        build_datasets(cfg.data, tok, **options)
    build_datasets(cfg.data, tok, tools=None, interactions=None)  # without simulated users the key is not read


class _SlowUser(AnswerFeedback):
    def respond(self, messages, kwargs):
        time.sleep(5)
        return super().respond(messages, kwargs)


def test_a_simulated_user_that_hangs_ends_the_conversation_on_time(tok) -> None:
    rollout = MultiTurnRollout(
        RetryEngine(tok, []), tok, {}, tok.pad_token_id, interactions={"gsm8k": _SlowUser()}, interaction_timeout_s=0.2
    )
    record = dataclasses.replace(_record(tok, {}, 0), extra_info={"interaction_kwargs": {"ground_truth": "84"}})
    start = time.monotonic()
    batch = generate(rollout, [record], SamplingParams(n=1, max_new_tokens=200), seeds=[1])
    assert time.monotonic() - start < 3  # preempted, not waited for
    assert batch.row_metrics["interaction_timeouts"].tolist() == [1.0]
    assert batch.row_metrics["user_turns"].tolist() == [0.0] and batch.finish_reasons == ["stop"]
    assert "try again" not in tok.decode(batch.response_ids[0])
