"""Data loading: verl-schema parquet -> validated, tokenized prompts -> resumable batches.

Every test writes real parquet files with pyarrow and, where tokens matter, uses the real tiny
tokenizer (tests/conftest.py). Validation errors must name file, row and column.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from npu_rl.config import DataConfig
from npu_rl.data import BatchSampler, DataError, build_datasets, load_prompts


def make_row(i: int, **overrides) -> dict:
    row = {
        "data_source": "synthetic/arith",
        "prompt": [{"role": "user", "content": f"What is {i} plus one? Put the answer in \\boxed{{}}."}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(i + 1)},
        "extra_info": {"split": "train", "index": i},
    }
    row.update(overrides)
    return row


def write(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def data_error(files, tokenizer=None) -> DataError:
    """Validation runs before tokenization, so these tests need no tokenizer: None would crash if used."""
    with pytest.raises(DataError) as info:
        load_prompts(files, tokenizer)
    return info.value


# ---------------------------------------------------------------------------------------------
# Validation: each kind of malformed input names file, row and column


def test_valid_rows_become_records(tmp_path, tiny_tokenizer):
    path = write(tmp_path / "train.parquet", [make_row(i) for i in range(4)])
    ds = load_prompts(path, tiny_tokenizer)
    assert len(ds) == 4 and ds.num_rows == 4 and ds.num_filtered == 0
    rec = ds.records[2]
    assert (rec.index, rec.file, rec.row) == (2, str(path), 2)
    assert rec.data_source == "synthetic/arith" and rec.ground_truth == "3" and rec.ability == "math"
    assert rec.extra_info == {"split": "train", "index": 2}
    assert rec.messages == [{"role": "user", "content": "What is 2 plus one? Put the answer in \\boxed{}."}]
    assert rec.prompt_text.startswith("<|im_start|>user\nWhat is 2 plus one?")
    assert rec.prompt_text.endswith("<|im_end|>\n<|im_start|>assistant\n")  # the generation prompt
    assert tiny_tokenizer.decode(rec.prompt_ids) == rec.prompt_text


THINKING_TEMPLATE = (  # Qwen3's switch, reduced: the generation prompt closes the thinking block when asked
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def test_chat_template_kwargs_reach_the_template(tmp_path, tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = THINKING_TEMPLATE
    path = write(tmp_path / "train.parquet", [make_row(1)])
    thinking = load_prompts(path, tokenizer).records[0]
    direct = load_prompts(path, tokenizer, DataConfig(apply_chat_template_kwargs={"enable_thinking": False})).records[0]
    assert thinking.prompt_text.endswith("<|im_start|>assistant\n")
    assert direct.prompt_text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tokenizer.decode(direct.prompt_ids) == direct.prompt_text


def test_optional_columns_and_numeric_ground_truth(tmp_path, tiny_tokenizer):
    rows = [
        {"data_source": "s", "prompt": make_row(0)["prompt"], "reward_model": {"ground_truth": v}}
        for v in (72.0, 0.5, -3.0)
    ]
    ints = [{"data_source": "s", "prompt": make_row(0)["prompt"], "reward_model": {"ground_truth": 42}}]
    ds = load_prompts([write(tmp_path / "f.parquet", rows), write(tmp_path / "i.parquet", ints)], tiny_tokenizer)
    # pandas turns integer answers into floats: 72.0 is the answer 72, not "72.0"
    assert [r.ground_truth for r in ds.records] == ["72", "0.5", "-3", "42"]
    assert {r.ability for r in ds.records} == {"math"}  # no ability column: verl's math default
    assert all(r.extra_info == {} for r in ds.records)  # no extra_info column
    assert [r.index for r in ds.records] == [0, 1, 2, 3]  # indices run on across files
    assert [(Path(r.file).name, r.row) for r in ds.records][-1] == ("i.parquet", 0)


def test_missing_file_and_not_parquet(tmp_path):
    text = tmp_path / "notes.parquet"
    text.write_text("this is not parquet")
    err = data_error([tmp_path / "absent.parquet", text, tmp_path])
    assert f"{tmp_path / 'absent.parquet'}: not found" in str(err)
    assert f"{text}: not a readable parquet file" in str(err)
    assert f"{tmp_path}: not a file" in str(err)
    assert "3 problems" in str(err)


def test_missing_column_suggests_close_name(tmp_path):
    rows = [{**make_row(0), "reward_models": make_row(0)["reward_model"]}]
    del rows[0]["reward_model"]
    path = write(tmp_path / "train.parquet", rows)
    err = data_error(path)
    assert f"{path} column reward_model: missing column (did you mean 'reward_models'?)" in str(err)


def test_custom_prompt_key(tmp_path, tiny_tokenizer):
    rows = [make_row(0)]
    rows[0]["question"] = rows[0].pop("prompt")
    path = write(tmp_path / "train.parquet", rows)
    assert "column prompt: missing column" in str(data_error(path))
    ds = load_prompts(path, tiny_tokenizer, DataConfig(prompt_key="question"))
    assert ds.records[0].messages == make_row(0)["prompt"]


def test_missing_ground_truth_names_file_row_column(tmp_path):
    rows = [make_row(i) for i in range(20)]
    rows[17]["reward_model"] = {"style": "rule", "ground_truth": None}
    rows[3]["reward_model"] = {"style": "rule", "ground_truth": "  "}
    path = write(tmp_path / "train.parquet", rows)
    err = data_error(path)
    assert f"{path} row 17 column reward_model.ground_truth: missing" in str(err)
    assert f"{path} row 3 column reward_model.ground_truth: empty" in str(err)
    assert len(err.problems) == 2


def test_empty_prompt_and_bad_messages(tmp_path):
    rows = [make_row(i) for i in range(6)]
    rows[1]["prompt"] = []
    rows[2]["prompt"] = [{"role": "bot", "content": "hi"}]
    rows[4]["prompt"] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": None}]
    rows[5]["prompt"] = None
    path = write(tmp_path / "train.parquet", rows)
    text = str(data_error(path))
    assert f"{path} row 1 column prompt: empty" in text
    assert f"{path} row 2 column prompt[0].role: 'bot' is not one of system, user, assistant" in text
    assert f"{path} row 4 column prompt[1].content: missing" in text
    assert f"{path} row 5 column prompt: missing" in text
    assert "row 0 " not in text and "row 3 " not in text


def test_plain_string_prompt_explains_the_fix(tmp_path):
    path = write(tmp_path / "train.parquet", [make_row(i, prompt=f"What is {i}?") for i in range(3)])
    err = data_error(path)
    # one mistake over a whole column is one line listing the rows, not one line per row
    assert err.problems == [
        f"{path} rows 0, 1, 2 column prompt: expected a list of {{role, content}} messages, got a plain string "
        "(wrap it: [{'role': 'user', 'content': text}])"
    ]


def test_raw_string_prompts_when_the_config_says_so(tmp_path, tiny_tokenizer):
    path = write(tmp_path / "train.parquet", [make_row(i, prompt=f"Question: {i}+1?\nAnswer:") for i in range(2)])
    ds = load_prompts(path, tiny_tokenizer, DataConfig(apply_chat_template=False))
    rec = ds.records[1]
    assert rec.prompt_text == "Question: 1+1?\nAnswer:"  # no chat template around it
    assert tiny_tokenizer.decode(rec.prompt_ids) == rec.prompt_text


def test_wrong_types(tmp_path):
    rows = [make_row(i, data_source=i) for i in range(8)]
    path = write(tmp_path / "a.parquet", rows)
    lists = write(tmp_path / "b.parquet", [make_row(0, reward_model={"ground_truth": ["1", "2"]})])
    ints = write(tmp_path / "c.parquet", [make_row(1, ability=7, extra_info=None)])
    err = data_error([path, lists, ints])
    text = str(err)
    assert f"{path} rows 0, 1, 2, 3, 4 and 3 more column data_source: expected a string, got int" in text
    assert f"{lists} row 0 column reward_model.ground_truth: expected a string or number, got list" in text
    assert f"{ints} row 0 column ability: expected a string, got int" in text
    assert "extra_info" not in text  # a null extra_info is an empty one
    assert text.startswith("10 problems in the data")


def test_many_problems_listed_at_once(tmp_path):
    # 12 distinct role mistakes and one data_source mistake in 2 rows: 14 problems of 13 kinds
    rows = [make_row(i, prompt=[{"role": f"r{i}", "content": "x"}]) for i in range(12)]
    rows += [make_row(12, data_source=""), make_row(13, data_source="")]
    path = write(tmp_path / "train.parquet", rows)
    err = data_error(path)
    text = str(err)
    assert text.startswith("14 problems in the data")
    assert f"{path} row 0 column prompt[0].role: 'r0' is not one of system, user, assistant" in text
    assert "'r9' is not one of" in text and "'r10'" not in text  # the first 10 kinds are shown...
    assert "... and 3 more kinds of problem" in text  # ...the rest counted
    assert len(err.problems) == 13  # and every one is on the exception
    assert f"{path} rows 12, 13 column data_source: empty" in err.problems


def test_map_typed_columns_are_accepted(tmp_path, tiny_tokenizer):
    schema = pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(pa.map_(pa.string(), pa.string()))),
            ("reward_model", pa.map_(pa.string(), pa.string())),
            ("extra_info", pa.map_(pa.string(), pa.string())),
        ]
    )
    rows = [
        {
            "data_source": "s",
            "prompt": [[("role", "user"), ("content", "What is 1 plus one?")]],
            "reward_model": [("style", "rule"), ("ground_truth", "2")],
            "extra_info": [("split", "test")],
        }
    ]
    rec = load_prompts(write(tmp_path / "m.parquet", rows, schema), tiny_tokenizer).records[0]
    assert (rec.ground_truth, rec.extra_info, rec.messages[0]["role"]) == ("2", {"split": "test"}, "user")


def test_all_splits_validated_before_tokenizing(tmp_path, synthetic_parquet):
    bad_val = write(tmp_path / "val.parquet", [make_row(0, reward_model={"style": "rule", "ground_truth": ""})])
    cfg = DataConfig(train_files=[str(synthetic_parquet["train"])], val_files=[str(bad_val)])
    with pytest.raises(DataError, match=re.escape("val.parquet row 0 column reward_model.ground_truth: empty")):
        build_datasets(cfg, tokenizer=None)  # would crash on first use: nothing was tokenized


def test_no_files_and_empty_file(tmp_path):
    assert "no parquet files given" in str(data_error([]))
    empty = write(tmp_path / "e.parquet", [], schema=pa.Table.from_pylist([make_row(0)]).schema)
    assert f"{empty}: has no rows" in str(data_error(empty))


# ---------------------------------------------------------------------------------------------
# Tokenization and overlong prompts


def prompt_lengths(path: Path, tokenizer) -> list[int]:
    return [len(r.prompt_ids) for r in load_prompts(path, tokenizer, DataConfig(max_prompt_length=10_000)).records]


def test_overlong_prompts_filtered_and_counted(synthetic_parquet, tiny_tokenizer, caplog):
    path = synthetic_parquet["train"]
    lengths = prompt_lengths(path, tiny_tokenizer)
    limit = sorted(lengths)[len(lengths) // 2]
    expected = sum(n > limit for n in lengths)
    assert 0 < expected < len(lengths)
    with caplog.at_level(logging.WARNING, logger="npu_rl.data"):
        ds = load_prompts(path, tiny_tokenizer, DataConfig(max_prompt_length=limit))
    assert ds.filtered == {str(path): expected} and len(ds) == len(lengths) - expected
    assert f"filtered {expected} of {len(lengths)} prompts longer than {limit} tokens in {path}" in caplog.text
    assert max(len(r.prompt_ids) for r in ds.records) <= limit
    # indices stay those of the unfiltered set: the same row keeps the same index
    assert [r.index for r in ds.records] == [i for i, n in enumerate(lengths) if n <= limit]


def test_overlong_is_an_error_when_filtering_is_off(synthetic_parquet, tiny_tokenizer):
    path = synthetic_parquet["train"]
    lengths = prompt_lengths(path, tiny_tokenizer)
    limit = max(lengths) - 1
    rows = [i for i, n in enumerate(lengths) if n > limit]
    cfg = DataConfig(max_prompt_length=limit, filter_overlong_prompts=False)
    with pytest.raises(DataError) as info:
        load_prompts(path, tiny_tokenizer, cfg)
    assert info.value.problems[0].startswith(f"{path} row{'s' if len(rows) > 1 else ''} {rows[0]}")
    assert f"column prompt: longer than data.max_prompt_length={limit} tokens" in str(info.value)


@pytest.mark.parametrize("side", ["left", "right", "middle"])
def test_truncation_cuts_overlong_prompts_as_verl(synthetic_parquet, tiny_tokenizer, caplog, side):
    path = synthetic_parquet["train"]
    full = load_prompts(path, tiny_tokenizer, DataConfig(max_prompt_length=10_000)).records
    limit = sorted(len(r.prompt_ids) for r in full)[len(full) // 2]
    cfg = DataConfig(max_prompt_length=limit, filter_overlong_prompts=False, truncation=side)
    with caplog.at_level(logging.WARNING, logger="npu_rl.data"):
        ds = load_prompts(path, tiny_tokenizer, cfg)
    cut = sum(len(r.prompt_ids) > limit for r in full)
    assert f"truncated {cut} of {len(full)} prompts longer than {limit} tokens in {path}" in caplog.text
    assert len(ds) == len(full) and ds.filtered == {}
    # verl's postprocess_data on one row: [:, -L:], [:, :L], cat([:, :L // 2], [:, -(L - L // 2):])
    slices = {"left": slice(-limit, None), "right": slice(None, limit)}
    for whole, rec in zip(full, ds.records, strict=True):
        ids = torch.tensor([whole.prompt_ids])
        if len(whole.prompt_ids) <= limit:
            expected = ids
        elif side == "middle":
            expected = torch.cat([ids[:, : limit // 2], ids[:, -(limit - limit // 2) :]], dim=-1)
        else:
            expected = ids[:, slices[side]]
        assert rec.prompt_ids == expected[0].tolist() and rec.index == whole.index
        assert rec.prompt_text == (
            whole.prompt_text if len(whole.prompt_ids) <= limit else tiny_tokenizer.decode(rec.prompt_ids)
        )


def test_truncation_does_nothing_while_overlong_prompts_are_filtered(synthetic_parquet, tiny_tokenizer):
    path = synthetic_parquet["train"]
    limit = max(prompt_lengths(path, tiny_tokenizer)) - 1
    kept = load_prompts(path, tiny_tokenizer, DataConfig(max_prompt_length=limit, truncation="left"))
    assert kept.num_filtered > 0 and max(len(r.prompt_ids) for r in kept.records) <= limit


def test_every_prompt_filtered_is_an_error(synthetic_parquet, tiny_tokenizer):
    with pytest.raises(DataError, match=re.escape("every prompt is longer than data.max_prompt_length=3 tokens")):
        load_prompts(synthetic_parquet["train"], tiny_tokenizer, DataConfig(max_prompt_length=3))


def test_build_datasets_cuts_validation_set(synthetic_parquet, tiny_tokenizer):
    cfg = DataConfig(
        train_files=[str(synthetic_parquet["train"])], val_files=[str(synthetic_parquet["test"])], val_max_samples=5
    )
    train, val = build_datasets(cfg, tiny_tokenizer)
    assert len(train) == 48 and len(val) == 5 and val.num_rows == 16
    assert [len(b) for b in val.batches(2)] == [2, 2, 1]  # validation sees every prompt
    assert build_datasets(DataConfig(train_files=cfg.train_files), tiny_tokenizer)[1] is None


# ---------------------------------------------------------------------------------------------
# Sampler: deterministic, drops the incomplete batch, resumes exactly


@pytest.fixture(scope="module")
def records(synthetic_parquet, tiny_tokenizer):
    return load_prompts(synthetic_parquet["train"], tiny_tokenizer).records  # 48 prompts


def indices(batches) -> list[list[int]]:
    return [[r.index for r in b] for b in batches]


def take(sampler: BatchSampler, n: int) -> list[list[int]]:
    return indices(sampler.next_batch() for _ in range(n))


def test_shuffle_is_deterministic_per_seed(records):
    a, b, c = (BatchSampler(records, 5, seed=s) for s in (7, 7, 8))
    run = take(a, 27)  # 3 epochs of 9 full batches (48 // 5), 3 prompts dropped each epoch
    assert run == take(b, 27)
    assert run != take(c, 27)
    epochs = [[i for batch in run[e * 9 : (e + 1) * 9] for i in batch] for e in range(3)]
    for epoch in epochs:
        assert len(epoch) == len(set(epoch)) == 45  # no repeats within an epoch
    assert epochs[0] != epochs[1] != epochs[2]  # a fresh order each epoch
    assert a.epoch == 3 and a.position == 0


def test_no_shuffle_is_file_order(records):
    sampler = BatchSampler(records, 16, shuffle=False)
    assert take(sampler, 4) == [list(range(0, 16)), list(range(16, 32)), list(range(32, 48)), list(range(0, 16))]
    assert sampler.steps_per_epoch == 3


@pytest.mark.parametrize("done", [4, 9, 18, 22])  # mid-epoch, exactly at the 1st and 2nd epoch boundary, later
def test_resume_continues_with_the_next_batch(records, done):
    straight = BatchSampler(records, 5, seed=3)
    expected = take(straight, 30)
    first = BatchSampler(records, 5, seed=3)
    assert take(first, done) == expected[:done]
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores survives JSON
    if done % 9 == 0:
        assert (state["epoch"], state["position"]) == (done // 9, 0)  # boundary: next batch is batch 0 of next epoch
    resumed = BatchSampler(records, 5, seed=3)
    resumed.load_state_dict(state)
    assert take(resumed, 30 - done) == expected[done:]


def test_resume_refuses_a_different_order(records):
    state = BatchSampler(records, 5, seed=3).state_dict()
    with pytest.raises(DataError, match=re.escape("checkpoint has data.seed=3, config has 4")):
        BatchSampler(records, 5, seed=4).load_state_dict(state)
    with pytest.raises(DataError, match=re.escape("checkpoint has data.train_batch_size=5, config has 6")):
        BatchSampler(records, 6, seed=3).load_state_dict(state)
    with pytest.raises(DataError, match=re.escape("training set had 48 prompts, this one has 47")):
        BatchSampler(records[1:], 5, seed=3).load_state_dict(state)
    with pytest.raises(DataError, match=re.escape("invalid epoch/position")):
        BatchSampler(records, 5, seed=3).load_state_dict({**state, "position": 45})


def test_fewer_prompts_than_a_batch_is_an_error(records):
    with pytest.raises(DataError, match=re.escape("has 3 prompts after filtering, fewer than data.train_batch_size=8")):
        BatchSampler(records[:3], 8)


def test_damaged_parquet_body_names_the_file_and_other_files_still_report(tmp_path):
    good = write(tmp_path / "good.parquet", [make_row(i) for i in range(200)])
    damaged = tmp_path / "damaged.parquet"
    raw = bytearray(good.read_bytes())
    raw[8 : len(raw) // 2] = b"\xff" * (len(raw) // 2 - 8)  # the data pages; footer and schema stay readable
    damaged.write_bytes(bytes(raw))
    pq.read_schema(damaged)  # the footer still reads: only reading the rows fails
    rows = [make_row(0)]
    del rows[0]["data_source"]
    other = write(tmp_path / "other.parquet", rows)
    err = data_error([damaged, other])
    assert re.search(rf"{re.escape(str(damaged))}: cannot read the data, the file is damaged \(.+\)", str(err))
    assert f"{other} column data_source: missing column" in str(err)
    assert len(err.problems) == 2


def test_empty_or_blank_message_content_is_a_data_error(tmp_path):
    rows = [make_row(i) for i in range(4)]
    rows[1]["prompt"] = [{"role": "user", "content": ""}]
    rows[2]["prompt"] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": " \n\t "}]
    path = write(tmp_path / "train.parquet", rows)
    text = str(data_error(path))
    assert f"{path} row 1 column prompt[0].content: empty" in text
    assert f"{path} row 2 column prompt[1].content: only whitespace" in text
    assert "row 0 " not in text and "row 3 " not in text
