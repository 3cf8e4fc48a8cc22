"""The offline assets: synthetic parquet, tiny tokenizer and tiny model, as the fixtures build them."""

from __future__ import annotations

import operator
import re

import pyarrow.parquet as pq
import pytest
import torch

from npu_rl.tools import make_synthetic_math as msm
from npu_rl.tools import make_tiny_model
from reward import compute_score

EQUATION = re.compile(r"^(\d+) ([-+*]) (\d+) = (\d+)$")
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}  # independent of the generator's own


def test_parquet_rows_follow_verl_schema(synthetic_parquet):
    for split, n in (("train", 48), ("test", 16)):
        rows = pq.read_table(synthetic_parquet[split]).to_pylist()
        assert len(rows) == n
        for i, row in enumerate(rows):
            assert row["data_source"] == "synthetic/arith"
            assert row["ability"] == "math"
            assert len(row["prompt"]) == 1 and row["prompt"][0]["role"] == "user"
            assert row["prompt"][0]["content"].endswith(msm.INSTRUCTION)
            assert row["reward_model"]["style"] == "rule"
            assert re.fullmatch(r"\d+", row["reward_model"]["ground_truth"])
            assert row["extra_info"]["split"] == split and row["extra_info"]["index"] == i
            assert row["extra_info"]["kind"] in msm.KINDS and row["extra_info"]["level"] == 2


def test_splits_are_disjoint_and_deterministic():
    train, test = msm.make_splits(300, 100, seed=3)
    assert not {p.key for p in train} & {p.key for p in test}
    assert len({p.key for p in train}) == 300
    assert msm.make_splits(300, 100, seed=3) == (train, test)
    assert msm.make_splits(300, 100, seed=4)[1] != test
    test_keys = {p.key for p in test}
    stream = msm.iter_problems(seed=5, exclude=test_keys)
    assert all(next(stream).key not in test_keys for _ in range(2000))


def test_worked_solutions_are_correct_and_graded_right():
    for problem, _ in zip(msm.iter_problems(seed=1), range(500), strict=False):
        value = problem.numbers[0]
        for step in problem.steps:
            a, op, b, c = EQUATION.match(step).groups()
            assert int(a) == value and OPS[op](int(a), int(b)) == int(c)
            value = int(c)
        assert value == problem.answer >= 0
        for text in (problem.worked(), problem.shortcut()):
            assert compute_score(msm.DATA_SOURCE, text, str(problem.answer))["acc"]
        assert not compute_score(msm.DATA_SOURCE, problem.shortcut(), str(problem.answer + 1))["acc"]


def test_tokenizer_splits_digits_and_round_trips(tiny_tokenizer):
    assert 400 <= len(tiny_tokenizer) <= 512
    assert tiny_tokenizer.eos_token == "<|im_end|>" and tiny_tokenizer.pad_token == "<|endoftext|>"
    ids = tiny_tokenizer("x 12345 = 9876")["input_ids"]
    pieces = [tiny_tokenizer.decode([i]) for i in ids]
    assert [p for p in pieces if p.strip().isdigit()] == list("123459876")
    text = "Ünïcode and emoji 🙂 survive byte-level BPE: \\boxed{42}."
    assert tiny_tokenizer.decode(tiny_tokenizer(text)["input_ids"]) == text
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tiny_tokenizer(special)["input_ids"]) == 1


def test_chat_template_is_chatml(tiny_tokenizer):
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    rendered = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    plain = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert plain == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"


def test_tiny_model_loads_offline_and_runs(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "qwen2" and model.dtype == torch.float32
    assert model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert model.config.vocab_size >= len(tiny_tokenizer)
    assert AutoTokenizer.from_pretrained(tiny_model_dir)("7 + 8")["input_ids"] == tiny_tokenizer("7 + 8")["input_ids"]
    gen = GenerationConfig.from_pretrained(tiny_model_dir)
    assert tiny_tokenizer.eos_token_id in gen.eos_token_id and gen.pad_token_id == tiny_tokenizer.pad_token_id
    ids = torch.tensor([tiny_tokenizer("1 + 1 =")["input_ids"]])
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()


def test_random_model_is_seeded(tiny_tokenizer):
    a = make_tiny_model.random_model(tiny_tokenizer, size="test", seed=0).state_dict()
    b = make_tiny_model.random_model(tiny_tokenizer, size="test", seed=0).state_dict()
    c = make_tiny_model.random_model(tiny_tokenizer, size="test", seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


@pytest.mark.parametrize("size", sorted(make_tiny_model.SIZES))
def test_sizes_are_valid_qwen2_configs(tiny_tokenizer, size):
    config = make_tiny_model.qwen2_config(tiny_tokenizer, size)
    assert config.hidden_size % config.num_attention_heads == 0
    assert config.num_attention_heads % config.num_key_value_heads == 0
    assert config.vocab_size % 64 == 0


def test_pretraining_examples_train_only_on_the_answer(tiny_tokenizer):
    problem = next(msm.iter_problems(seed=0))
    ids, n_prompt = make_tiny_model.encode(tiny_tokenizer, problem, problem.shortcut())
    assert ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(ids[n_prompt:-1]) == problem.shortcut()
    assert tiny_tokenizer.decode(ids[:n_prompt]).endswith("<|im_start|>assistant\n")
    short = make_tiny_model.encode(tiny_tokenizer, problem, "7")
    batch = make_tiny_model.collate([(ids, n_prompt), short], tiny_tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, len(ids))
    assert batch["labels"][0].tolist() == [-100] * n_prompt + ids[n_prompt:]
    assert (batch["labels"][1] != -100).sum() == 2  # "7" and <|im_end|>; padding is never a target
    assert batch["attention_mask"][1].sum() == len(short[0])


def test_a_short_stage_lowers_the_loss(tiny_tokenizer):
    import random

    model = make_tiny_model.random_model(tiny_tokenizer, size="test", seed=0)
    problems = msm.iter_problems(seed=0)
    fixed = [make_tiny_model.encode(tiny_tokenizer, p, p.worked()) for p, _ in zip(problems, range(16), strict=False)]
    batch = make_tiny_model.collate(fixed, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        before = model(**batch).loss.item()
    stage = make_tiny_model.Stage("t", steps=15, lr=3e-3, shortcut_share=0.5, warmup_steps=2, batch_size=16)
    make_tiny_model.run_stage(model, tiny_tokenizer, stage, problems, random.Random(0))
    with torch.no_grad():
        assert model(**batch).loss.item() < before - 1.0


def test_answer_loss_is_the_models_own_loss_and_gradient(tiny_tokenizer):
    """The head runs only where a label is; loss and gradients are transformers' to fp32 rounding."""
    model = make_tiny_model.random_model(tiny_tokenizer, size="test", seed=0)
    problems = msm.iter_problems(seed=0)
    examples = [make_tiny_model.encode(tiny_tokenizer, p, p.worked()) for p, _ in zip(problems, range(6), strict=False)]
    batch = make_tiny_model.collate(examples, tiny_tokenizer.pad_token_id)
    assert (batch["attention_mask"] == 0).any(), "the batch must hold padding for the test to mean anything"
    grads = []
    for loss_fn in (lambda: model(**batch).loss, lambda: make_tiny_model.answer_loss(model, batch)):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (ref_loss, ref_grads), (loss, grads) = grads
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    # Measured: at most 4.0e-7 x the tensor's largest gradient, with AVX-512 and with AVX2 kernels
    # (only the head's weight gradient sums fewer rows); 10x margin.
    for ref, got in zip(ref_grads, grads, strict=True):
        assert (got - ref).abs().max() <= 4e-6 * ref.abs().max()


def test_headroom_report_uses_the_evaluator(tiny_model_dir, synthetic_parquet, tmp_path):
    from npu_rl.tools import _headroom

    result = _headroom.measure(tiny_model_dir, synthetic_parquet["test"], tmp_path, "base", num_threads=1)
    assert result["num_prompts"] == 16
    for key in ("greedy_acc", "greedy_worked", "sampled_acc", f"pass@{_headroom.K}", "sampled_worked"):
        assert 0.0 <= result[key] <= 1.0
    assert result[f"pass@{_headroom.K}"] >= result["sampled_acc"]
    assert 0 < result["greedy_len"] <= _headroom.MAX_NEW_TOKENS
    assert (tmp_path / "base.headroom.json").is_file()
    assert all(path.startswith(str(tmp_path)) for path in result["generations"])
    better = {**result, "greedy_acc": result["greedy_acc"] + 0.25, "greedy_len": result["greedy_len"] + 10}
    change = _headroom.format_change(result, better)
    assert "(+25.0 points)" in change and "held-out greedy accuracy" in change
    assert "greedy:  acc" in _headroom.format_result(result, "base")


def test_demo_config_is_valid_and_points_at_the_assets(tmp_path, monkeypatch):
    from npu_rl import configs
    from npu_rl.config import load_config

    monkeypatch.chdir(tmp_path)  # load_config checks that the local model folder exists (run/tiny_grpo.sh builds it)
    (tmp_path / "assets/models/tiny-base").mkdir(parents=True)
    assert "tiny_grpo" in configs.available()
    assert configs.resolve("run/configs/tiny_grpo.yaml") == configs.resolve("tiny_grpo")  # the old path still works
    cfg = load_config(configs.resolve("tiny_grpo"), ["trainer.experiment_name=x"])
    assert cfg.model.path == "assets/models/tiny-base"
    assert cfg.data.train_files == ["assets/data/synthetic/train.parquet"]
    assert cfg.data.val_files == ["assets/data/synthetic/test.parquet"]
    assert cfg.trainer.device == "cpu" and not cfg.needs_ref
    assert cfg.rollout.val_kwargs.temperature == 0.0


def test_build_base_writes_a_loadable_folder_and_skips_held_out_problems(synthetic_parquet, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    held_out = make_tiny_model.held_out_keys(synthetic_parquet["test"])
    assert held_out == {msm.row_key(r) for r in pq.read_table(synthetic_parquet["test"]).to_pylist()}
    assert len(held_out) == 16
    stages = (make_tiny_model.Stage("s", steps=2, lr=1e-3, shortcut_share=0.5, batch_size=4),)
    out = make_tiny_model.build_base(tmp_path / "base", synthetic_parquet["test"], stages=stages, size="test")
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.hidden_size == make_tiny_model.SIZES["test"]["hidden_size"]
    assert tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).startswith("<|im_start|>")
    assert (out / "generation_config.json").is_file()


def test_asking_for_more_problems_than_exist_is_an_error():
    with pytest.raises(ValueError, match="distinct"):
        msm.make_splits(100_000, 10, seed=0)
