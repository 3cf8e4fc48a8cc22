"""User reward functions called the way their framework calls them: verl by keyword (with
reward_kwargs), TRL with (prompts, completions, **columns) -> list[float]; through the real worker pool."""

from __future__ import annotations

import math
import textwrap

import pytest

from npu_rl.config import ConfigError, CustomRewardFunction, RewardConfig, WeightedReward, load_config
from npu_rl.reward_manager import RewardItem, RewardManager
from reward.scoring import RewardError, Scorer, ScorerSpec, Term

MESSAGES = [{"role": "user", "content": "What is 1+2?"}]


def _write(tmp_path, body: str):
    path = tmp_path / "user_reward.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


VERL_FILE = """
    def compute_score(solution_str, ground_truth, data_source=None, extra_info=None, scale=1.0, bonus=0.0):
        # parameter order differs from verl's call: only a keyword call gets this right
        ok = solution_str.strip().endswith(str(ground_truth))
        return {"score": scale * float(ok) + bonus, "acc": ok, "source_len": float(len(data_source))}
"""


@pytest.mark.parametrize("workers", [0, 1])
def test_verl_function_called_by_keyword_with_reward_kwargs(tmp_path, workers):
    cfg = RewardConfig(
        custom_function=CustomRewardFunction(_write(tmp_path, VERL_FILE), "compute_score", {"scale": 2.0}),
        num_workers=workers,
    )
    with RewardManager(cfg) as manager:
        batch = manager.score([RewardItem("gsm8k", "so 3", "3"), RewardItem("gsm8k", "so 4", "3")])
    assert batch.scores == [2.0, 0.0] and batch.acc == [True, False]
    assert batch.components["source_len"] == [5.0, 5.0]


def test_verl_reward_kwargs_from_verl_config_keys(tmp_path):
    path = _write(tmp_path, VERL_FILE)
    cfg = load_config(
        None,
        [
            "model.path=m",
            "data.train_files=[a]",
            f"custom_reward_function.path={path}",
            "custom_reward_function.reward_kwargs={scale: 3.0, bonus: 0.5}",
        ],
    )
    with RewardManager(cfg.reward) as manager:
        assert manager.score([RewardItem("x", "it is 7", "7")]).scores == [3.5]


TRL_FILE = """
    def correctness(prompts, completions, ground_truth, level, **kwargs):
        out = []
        for prompt, completion, truth, lvl in zip(prompts, completions, ground_truth, level, strict=True):
            text = completion[0]["content"] if isinstance(completion, list) else completion
            asked = prompt[-1]["content"] if isinstance(prompt, list) else prompt
            out.append(float(text.endswith(truth)) * (2.0 if lvl == "hard" else 1.0) + kwargs.get("shift", 0.0)
                       + (0.01 if "1+2" in asked else 0.0))
        return out

    def not_applicable(prompts, completions, **kwargs):
        return [None for _ in completions]

    def exact_trl(prompts, completions, ground_truth):
        return [1.0 for _ in completions]
"""


@pytest.mark.parametrize("workers", [0, 1])
def test_trl_signature_auto_detected_with_columns_by_name(tmp_path, workers):
    path = _write(tmp_path, TRL_FILE)
    cfg = RewardConfig(
        functions=[
            WeightedReward(name="correctness", path=path, kwargs={"shift": 0.5}),
            WeightedReward(name="not_applicable", path=path, weight=3.0, style="trl"),
        ],
        num_workers=workers,
    )
    items = [
        RewardItem("m", "answer 3", "3", {"level": "hard"}, prompt=MESSAGES),
        RewardItem("m", "answer 4", "3", {"level": "easy"}, prompt="plain prompt"),
    ]
    with RewardManager(cfg) as manager:
        batch = manager.score(items)
    assert batch.scores == pytest.approx([2.51, 0.5])  # None from a TRL function adds nothing
    assert batch.components["correctness"] == pytest.approx([2.51, 0.5])
    # ... and is NaN in its term (so GDPO and the logged mean leave it out, as TRL does)
    assert all(math.isnan(v) for v in batch.components["not_applicable"])
    assert [row[0] for row in batch.terms] == pytest.approx([2.51, 0.5]) and all(math.isnan(r[1]) for r in batch.terms)


def test_style_errors_name_the_key(tmp_path):
    path = _write(tmp_path, TRL_FILE)
    with pytest.raises(RewardError, match=r"reward\.functions\[0\].*verl-style but has no parameter"):
        Scorer(ScorerSpec(terms=(Term("exact_trl", 1.0, path, {}, "verl"),)))
    with pytest.raises(RewardError, match=r"style: 'keras' is not one of"):
        Scorer(ScorerSpec(terms=(Term("correctness", 1.0, path, {}, "keras"),)))
    bad = _write(tmp_path, "def f(prompts, completions, **kw):\n    return 1.0\n")
    scorer = Scorer(ScorerSpec(terms=(Term("f", 1.0, bad),)))
    with pytest.raises(RewardError, match="one score per completion"):
        scorer("m", "x", "1", {}, MESSAGES)


def test_config_rejects_a_non_mapping_kwargs():
    with pytest.raises(Exception, match=r"reward\.functions\[0\]\.kwargs: expected a mapping"):
        load_config(None, ["model.path=m", "data.train_files=[a]", "reward.functions=[{name: math, kwargs: 3}]"])


def _plain_parquet(path, prompts):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"data_source": "m", "prompt": p, "reward_model": {"style": "rule", "ground_truth": "3"}} for p in prompts]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_plain_string_prompts_when_the_data_is_not_chat_formatted(tmp_path, tiny_tokenizer):
    from npu_rl.config import DataConfig
    from npu_rl.data import DataError, load_prompts

    path = _plain_parquet(tmp_path / "plain.parquet", ["Question: 1+2? Answer:", "Question: 2+1? Answer:"])
    data = load_prompts(path, tiny_tokenizer, DataConfig(apply_chat_template=False))
    first = data.records[0]
    assert first.prompt_text == "Question: 1+2? Answer:" and first.messages == []
    assert first.prompt_ids == tiny_tokenizer(first.prompt_text, add_special_tokens=False)["input_ids"]
    with pytest.raises(DataError, match=r"plain string.*wrap it"):  # chat formatting stays the default
        load_prompts(path, tiny_tokenizer, DataConfig())
    chat = tmp_path / "chat.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist(
            [{"data_source": "m", "prompt": MESSAGES, "reward_model": {"style": "rule", "ground_truth": "3"}}]
        ),
        chat,
    )
    with pytest.raises(DataError, match=r"plain-string prompt \(data.apply_chat_template=false\)"):
        load_prompts(chat, tiny_tokenizer, DataConfig(apply_chat_template=False))


def test_trl_function_gets_the_plain_prompt_string(tmp_path):
    path = _write(tmp_path, TRL_FILE)
    scorer = Scorer(ScorerSpec(terms=(Term("correctness", 1.0, path),)))
    out = scorer("m", "answer 3", "3", {"level": "easy"}, "What is 1+2?")
    assert out["score"] == pytest.approx(1.01)  # the string prompt reached the function


BATCH_FILE = """
    import os, time
    CALLS = os.environ["NPU_RL_TEST_CALLS"]

    def _count(n):
        with open(CALLS, "a") as f:
            f.write(f"{n}\\n")

    def correctness(prompts, completions, ground_truth, level, **kwargs):
        _count(len(completions))
        return [None if lvl == "skip" else float(c.endswith(t)) for c, t, lvl in zip(completions, ground_truth, level)]

    def compute_score(data_sources, solution_strs, ground_truths, extra_infos, scale=1.0):
        _count(len(solution_strs))
        pairs = zip(solution_strs, ground_truths)
        return [{"score": scale * float(s.endswith(t)), "acc": s.endswith(t)} for s, t in pairs]

    def too_few(prompts, completions, **kwargs):
        return [1.0]

    def slow(prompts, completions, **kwargs):
        time.sleep(5)
        return [1.0 for _ in completions]
"""


def _calls(tmp_path) -> list[int]:
    path = tmp_path / "calls.txt"
    return [int(n) for n in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("workers", [0, 1])
def test_a_batched_trl_function_is_called_once_per_step_with_every_completion(tmp_path, workers, monkeypatch):
    monkeypatch.setenv("NPU_RL_TEST_CALLS", str(tmp_path / "calls.txt"))
    path = _write(tmp_path, BATCH_FILE)
    cfg = RewardConfig(
        functions=[
            WeightedReward(name="correctness", path=path, batched=True),
            WeightedReward(name="math", weight=0.5),
        ],
        num_workers=workers,
    )
    items = [
        RewardItem("m", "x = 3", "3", {"level": "easy"}),
        RewardItem("m", "x = 4", "3", {"level": "easy"}),
        RewardItem("m", "x = 3", "3", {"level": "skip"}),
    ]
    with RewardManager(cfg) as manager:
        batch = manager.score(items)
    assert _calls(tmp_path) == [3]  # one call for the step, not one per completion
    per_item = RewardManager(RewardConfig(functions=[WeightedReward(name="math", weight=0.5)], num_workers=0))
    math_scores = per_item.score(items).scores
    assert batch.components["correctness"][:2] == [1.0, 0.0] and math.isnan(batch.components["correctness"][2])
    assert batch.scores == pytest.approx([1.0 + math_scores[0], math_scores[1], math_scores[2]])  # None adds 0


def test_verl_batch_reward_manager_calls_the_custom_function_with_lists(tmp_path, monkeypatch):
    monkeypatch.setenv("NPU_RL_TEST_CALLS", str(tmp_path / "calls.txt"))
    path = _write(tmp_path, BATCH_FILE)
    cfg = load_config(None, ["model.path=m", "data.train_files=[a]", f"custom_reward_function.path={path}",
                             "custom_reward_function.reward_kwargs={scale: 2.0}",
                             "reward_model.reward_manager=batch"])  # fmt: skip
    assert cfg.reward.custom_function.batched
    with RewardManager(cfg.reward) as manager:
        batch = manager.score([RewardItem("m", "so 3", "3"), RewardItem("m", "so 5", "3")])
    assert batch.scores == [2.0, 0.0] and batch.acc == [True, False] and _calls(tmp_path) == [2]
    with pytest.raises(ConfigError, match=r"reward_manager='prm'.*only 'naive', 'prime', 'dapo', 'batch'"):
        load_config(None, ["model.path=m", "data.train_files=[a]", "reward_model.reward_manager=prm"])


def test_batched_functions_are_bounded_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("NPU_RL_TEST_CALLS", str(tmp_path / "calls.txt"))
    path = _write(tmp_path, BATCH_FILE)
    items = [RewardItem("m", "so 3", "3"), RewardItem("m", "so 4", "3")]
    few = RewardConfig(functions=[WeightedReward(name="too_few", path=path, batched=True)], num_workers=0)
    with RewardManager(few) as manager, pytest.raises(RewardError, match=r"'too_few'.*one score per completion \(2\)"):
        manager.score(items)
    slow = RewardConfig(functions=[WeightedReward(name="slow", path=path, batched=True)], num_workers=0, timeout_s=0.2)
    with RewardManager(slow) as manager:
        batch = manager.score(items)  # 0.2 s per item: 0.4 s for the batch, then every item times out
    assert batch.timeouts == 2 and batch.scores == [0.0, 0.0]
    with pytest.raises(RewardError, match=r"batched: only a function loaded from a path"):
        Scorer(ScorerSpec(terms=(Term("math", batched=True),)))
    with pytest.raises(ConfigError, match=r"reward\.functions\[0\]\.batched: only a function loaded from a file"):
        load_config(None, ["model.path=m", "data.train_files=[a]", "reward.functions=[{name: math, batched: true}]"])
