"""Correctness-first tiers: what each tier pays and why a bonus can never beat correctness."""

from __future__ import annotations

import pytest

from reward import REGISTRY, Tiers, compute_score
from reward.tiers import reasoning_steps

WORKED = "12 + 7 = 19. 19 - 5 = 14. The answer is \\boxed{14}."  # the tiny demo's worked solution
SHORTCUT = "The answer is \\boxed{14}."  # the demo's bare shortcut


def score(response: str, truth: str = "14", source: str = "synthetic/arith", **kw: object) -> dict:
    return compute_score(source, response, truth, **kw)


def test_tier_table_with_default_weights() -> None:
    assert score(WORKED)["score"] == pytest.approx(1.2)  # correct + format + full reasoning
    assert score(SHORTCUT)["score"] == pytest.approx(1.1)  # correct + format, no reasoning
    lenient = score("12 + 7 = 19. 19 - 5 = 14. The answer is 14.", strict=False)
    assert lenient["score"] == pytest.approx(1.1)  # correct + reasoning, but not in the requested \boxed{}
    assert score(WORKED.replace("{14}", "{13}"))["score"] == 0.0  # wrong: floor, no bonus of any kind
    assert score("no idea")["score"] == 0.0


def test_an_incorrect_answer_earns_no_format_or_reasoning_credit() -> None:
    padded = " ".join(f"{i} + 1 = {i + 1}." for i in range(50)) + " The answer is \\boxed{15}."
    result = score(padded)
    assert (result["score"], result["format"], result["reasoning"]) == (0.0, 0.0, 0.0)
    assert result["has_answer"] == 1.0


def test_every_correct_answer_outscores_every_incorrect_one_whatever_the_weights() -> None:
    for tiers in (Tiers(), Tiers(format_bonus=0.5, reasoning_bonus=0.5), Tiers(incorrect=-1.0)):
        correct = [score(r, tiers=tiers)["score"] for r in (SHORTCUT, WORKED, "\\boxed{14} and some text after")]
        wrong = [score(r.replace("14", "41"), tiers=tiers)["score"] for r in (SHORTCUT, WORKED)]
        assert min(correct) > max(wrong)


def test_reasoning_bonus_is_modest_and_not_paid_for_padding() -> None:
    one_step = "12 + 7 = 19 and so on. The answer is \\boxed{14}."
    assert score(one_step)["reasoning"] == 0.5  # half of the two steps needed
    repeated = "12 + 7 = 19. " * 20 + "The answer is \\boxed{14}."
    assert score(repeated)["reasoning"] == 0.5  # the same step twenty times is still one step
    after = "The answer is \\boxed{14}. Check: 12 + 7 = 19. 19 - 5 = 14."
    assert score(after)["reasoning"] == 0.0  # reasoning after the answer does not count
    words = "First I add the numbers and then subtract. The answer is \\boxed{14}."
    assert score(words)["reasoning"] == 0.0  # prose without any worked step
    assert reasoning_steps("We have $x^2 = 9$, so $x = 3$.\n Then 2 \\cdot 3 = 6") == 2  # steps are sentences/lines


def test_format_bonus_needs_the_single_final_answer_in_the_requested_form() -> None:
    assert score(SHORTCUT)["format"] == 1.0
    assert score("So \\boxed{14}.\nThat is all.")["format"] == 1.0  # a short trailer is fine
    assert score("\\boxed{10}, no wait: \\boxed{14}")["format"] == 0.0  # two boxed answers
    long_tail = "The answer is \\boxed{14}. " + "Let me also say a lot more about other things. " * 3
    assert score(long_tail)["format"] == 0.0
    gsm = "3 + 4 = 7\n#### 7"
    assert compute_score("openai/gsm8k", gsm, "7")["format"] == 1.0
    assert compute_score("openai/gsm8k", "3 + 4 = 7\n#### 7 apples", "7")["format"] == 0.0  # GSM8K wants a number
    assert compute_score("openai/gsm8k", "3 + 4 = 7, \\boxed{7}", "7", strict=False)["format"] == 0.0


def test_weights_are_configurable() -> None:
    tiers = Tiers(incorrect=-0.5, correct=2.0, format_bonus=0.0, reasoning_bonus=1.0)
    assert score(WORKED, tiers=tiers)["score"] == pytest.approx(3.0)
    assert score(SHORTCUT, tiers=tiers)["score"] == pytest.approx(2.0)
    assert score("\\boxed{0}", tiers=tiers)["score"] == -0.5


def test_format_reward_functions() -> None:
    strict_xml = "<reasoning>\n3 + 4 = 7\n</reasoning>\n<answer>\n7\n</answer>\n"
    soft_xml = "<reasoning>3 + 4 = 7</reasoning> <answer>7</answer>"
    args = ("openai/gsm8k", "7")
    assert REGISTRY["format_strict_xml"](args[0], strict_xml, args[1]) == 1.0
    assert REGISTRY["format_strict_xml"](args[0], soft_xml, args[1]) == 0.0
    assert REGISTRY["format_soft_xml"](args[0], soft_xml, args[1]) == 1.0
    assert REGISTRY["format_soft_xml"](args[0], "<answer>7</answer>", args[1]) == 0.0
    assert REGISTRY["int_answer"](args[0], soft_xml, args[1]) == 1.0
    assert REGISTRY["int_answer"](args[0], "<answer>7.5</answer>", args[1]) == 0.0
    assert REGISTRY["xml_tags"](args[0], strict_xml, args[1]) == 1.0
    assert REGISTRY["xml_tags"](args[0], "<answer>7</answer>", args[1]) == 0.5
    assert REGISTRY["xml_tags"](args[0], strict_xml + "x" * 100, args[1]) == pytest.approx(0.9)
