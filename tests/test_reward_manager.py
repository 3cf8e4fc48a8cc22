"""RewardManager with real worker processes: batches, hard timeouts from any thread, custom and
weighted rewards, configuration errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from npu_rl.config import ConfigError, CustomRewardFunction, RewardConfig, WeightedReward
from npu_rl.reward_manager import RewardBatch, RewardItem, RewardManager
from reward import RewardError

USER_REWARD = """
import os, time

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if "hang" in solution_str:
        while True:
            pass
    if "crash" in solution_str:
        os._exit(7)
    if "sleep" in solution_str:
        time.sleep(0.4)
    print("a user print must not break the worker protocol")
    return {"score": float(solution_str == ground_truth), "length": len(solution_str), "note": "text is dropped"}

def plain(data_source, solution_str, ground_truth, extra_info=None):
    return 0.5

def broken(data_source, solution_str, ground_truth, extra_info=None):
    raise KeyError("oops")

def no_score(data_source, solution_str, ground_truth, extra_info=None):
    return {"value": 1}
"""


@pytest.fixture
def user_file(tmp_path: Path) -> str:
    path = tmp_path / "my_reward.py"
    path.write_text(USER_REWARD, encoding="utf-8")
    return str(path)


def custom(path: str, name: str = "compute_score", **kw: object) -> RewardConfig:
    return RewardConfig(custom_function=CustomRewardFunction(path=path, name=name), **kw)  # type: ignore[arg-type]


def demo_items(n: int) -> list[RewardItem]:
    items = []
    for i in range(n):
        a, b = i % 20, 7
        if i % 3 == 0:
            text = f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."
        elif i % 3 == 1:
            text = f"The answer is \\boxed{{{a + b}}}."
        else:
            text = f"The answer is \\boxed{{{a + b + 1}}}."
        items.append(RewardItem("synthetic/arith", text, str(a + b)))
    return items


def test_pool_grades_a_batch_of_128_in_milliseconds_per_item() -> None:
    with RewardManager(RewardConfig(num_workers=2)) as manager:
        items = demo_items(128)
        first = manager.score(items)  # includes worker start-up
        start = time.perf_counter()
        batch = manager.score(items)
        elapsed = time.perf_counter() - start
    assert batch.scores == first.scores
    expected = [1.15 if i % 3 == 0 else 1.1 if i % 3 == 1 else 0.0 for i in range(128)]
    assert batch.scores == pytest.approx(expected)
    assert batch.acc == [i % 3 != 2 for i in range(128)]
    assert set(batch.components) == {"format", "reasoning", "has_answer"}
    assert batch.timeouts == 0 and batch.errors == 0
    assert elapsed < 2.0, f"{1000 * elapsed / 128:.2f} ms per item"  # measured ~0.1 ms; generous for a busy host


def test_hanging_user_code_is_killed_from_a_thread_and_the_pool_recovers(user_file: str) -> None:
    manager = RewardManager(custom(user_file, timeout_s=0.5, num_workers=2))
    items = [RewardItem("x", t, "ok") for t in ("hang", "ok", "nope", "hang", "ok")]
    out: dict[str, RewardBatch] = {}
    start = time.perf_counter()
    worker = threading.Thread(target=lambda: out.setdefault("batch", manager.score(items)))
    worker.start()
    worker.join(timeout=60)
    elapsed = time.perf_counter() - start
    assert not worker.is_alive()
    batch = out["batch"]
    assert batch.timeouts == 2
    assert batch.scores == [0.0, 1.0, 0.0, 0.0, 1.0]
    assert batch.components == {"length": [0.0, 2.0, 4.0, 0.0, 2.0]}  # text values are not components
    assert elapsed < 15.0
    assert manager.score([RewardItem("x", "ok", "ok")]).scores == [1.0]  # replacements work
    manager.close()


def test_a_crashing_worker_scores_incorrect_and_is_counted(user_file: str) -> None:
    with RewardManager(custom(user_file, num_workers=1)) as manager:
        batch = manager.score([RewardItem("x", "crash", "crash"), RewardItem("x", "ok", "ok")])
    assert batch.scores == [0.0, 1.0] and batch.errors == 1 and batch.timeouts == 0


def test_close_stops_the_worker_processes() -> None:
    manager = RewardManager(RewardConfig(num_workers=2))
    manager.score(demo_items(4))
    assert manager._pool is not None
    procs = [w.proc for w in manager._pool._workers]
    manager.close()
    assert all(p.poll() is not None for p in procs)
    manager.close()  # idempotent


def test_in_process_budget_holds_in_the_main_thread_and_is_accounted_elsewhere(user_file: str) -> None:
    manager = RewardManager(custom(user_file, timeout_s=0.2, num_workers=0))
    start = time.perf_counter()
    batch = manager.score([RewardItem("x", "hang", "x"), RewardItem("x", "ok", "ok")])
    assert time.perf_counter() - start < 5.0  # SIGALRM preempted the loop
    assert batch.timeouts == 1 and batch.scores == [0.0, 1.0]
    out: dict[str, RewardBatch] = {}
    thread = threading.Thread(target=lambda: out.setdefault("b", manager.score([RewardItem("x", "sleep", "sleep")])))
    thread.start()
    thread.join(timeout=30)
    assert out["b"].timeouts == 1 and out["b"].scores == [0.0]  # over budget: counted after the fact


def test_in_process_default_reward_and_strict_vs_lenient() -> None:
    items = [
        RewardItem("synthetic/arith", "The answer is 14.", "14"),
        RewardItem("synthetic/arith", "\\boxed{14}", "14"),
    ]
    default = RewardManager(RewardConfig(num_workers=0)).score(items)
    assert default.acc == [True, True]  # correct by meaning from any clearly stated final answer
    assert default.scores == [1.0, 1.1]  # the requested form (\boxed{}) is the format tier
    strict = RewardManager(RewardConfig(num_workers=0, strict=True)).score(items)
    assert strict.acc == [False, True]  # reward.strict=true: only \boxed{} counts
    assert RewardManager(RewardConfig(num_workers=0, strict=True), strict=False).score(items).acc == [True, True]


def test_truncated_items_and_configured_answer_format() -> None:
    manager = RewardManager(RewardConfig(num_workers=0, answer_format="answer_tag"))
    batch = manager.score(
        [
            RewardItem("openai/gsm8k", "<reasoning>3 + 4 = 7</reasoning>\n<answer>7</answer>", "7"),
            RewardItem("openai/gsm8k", "<reasoning>3 + 4 = 7</reasoning>\n<answer>7</answer>", "7", truncated=True),
            RewardItem("openai/gsm8k", "#### 7", "7"),  # another form: correct, no format bonus
        ]
    )
    assert batch.acc == [True, False, True]
    assert batch.scores[0] > batch.scores[2] > 0


def test_weighted_list_logs_each_term(user_file: str) -> None:
    cfg = RewardConfig(
        num_workers=0,
        functions=[
            WeightedReward(name="math", weight=1.0),
            WeightedReward(name="format_soft_xml", weight=0.5),
            WeightedReward(name="plain", weight=2.0, path=user_file),
        ],
    )
    text = "<reasoning>3 + 4 = 7</reasoning><answer>\\boxed{7}</answer>"
    batch = RewardManager(cfg).score([RewardItem("lighteval/MATH", text, "7")])
    # math: 1.0 + format 0.1 (box inside the tag is still the single final answer) + reasoning 0.05
    assert batch.scores == pytest.approx([1.15 + 0.5 * 1.0 + 2.0 * 0.5])
    assert batch.acc == [True]  # from the first term that reports correctness
    assert batch.components["math"] == pytest.approx([1.15])
    assert batch.components["format_soft_xml"] == [1.0]
    assert batch.components["plain"] == [0.5]
    assert batch.components["math/format"] == [1.0]
    assert batch.terms == [pytest.approx([1.15, 1.0, 0.5])] and batch.term_weights == [1.0, 0.5, 2.0]  # for gdpo


def test_worker_pool_reports_each_terms_score_and_zeros_for_a_killed_item(user_file: str) -> None:
    cfg = RewardConfig(
        num_workers=1,
        timeout_s=0.3,
        functions=[WeightedReward(name="compute_score", path=user_file), WeightedReward(name="plain", path=user_file)],
    )
    with RewardManager(cfg) as manager:
        batch = manager.score([RewardItem("s", "7", "7"), RewardItem("s", "hang", "7")])
    assert batch.terms == [[1.0, 0.5], [0.0, 0.0]] and batch.term_weights == [1.0, 1.0]


def test_configuration_errors_name_the_key(user_file: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"reward.custom_function.path: file .* does not exist"):
        RewardManager(custom(str(tmp_path / "missing.py"), num_workers=0))
    with pytest.raises(RewardError, match=r"reward.custom_function.name: no function 'nope'.*compute_score"):
        RewardManager(custom(user_file, "nope", num_workers=0))
    with pytest.raises(ConfigError, match="not both"):
        RewardManager(custom(user_file, num_workers=0, functions=[WeightedReward()]))
    with pytest.raises(ConfigError, match=r"reward.functions\[0\].name: unknown reward 'acc'"):
        RewardManager(RewardConfig(num_workers=0, functions=[WeightedReward(name="acc")]))
    with pytest.raises(ValueError, match=r"reward\.timeout_s"):
        RewardManager(RewardConfig(timeout_s=0))


def test_broken_user_functions_raise_with_the_item(user_file: str) -> None:
    with RewardManager(custom(user_file, "broken", num_workers=1)) as manager:
        with pytest.raises(RewardError, match=r"(?s)item 0.*KeyError: 'oops'"):
            manager.score([RewardItem("x", "a", "b")])
        assert manager.score([]).scores == []  # still usable after the error
    with pytest.raises(RewardError, match=r"item 0: KeyError: 'oops'"):
        RewardManager(custom(user_file, "broken", num_workers=0)).score([RewardItem("x", "a", "b")])
    with pytest.raises(RewardError, match="without a 'score' key"):
        RewardManager(custom(user_file, "no_score", num_workers=0)).score([RewardItem("x", "a", "b")])
