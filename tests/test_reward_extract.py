"""Answer extraction: each supported form, strict vs lenient, truncation and hedges."""

from __future__ import annotations

import pytest

from reward import compute_score, extract_answer, route


def answer(text: str, requested: str = "boxed", strict: bool = False) -> str | None:
    found = extract_answer(text, requested=requested, strict=strict)
    return None if found is None else found.answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{\left\{ 1, 2 \right\}}", r"\left\{ 1, 2 \right\}"),  # escaped braces do not close the box
        (r"first \boxed{3}, then finally \boxed{x^{2}}", "x^{2}"),  # the last box wins
        (r"\fbox{12}", "12"),
        (r"\boxed 7.", "7."),
        (r"\boxed {5}", "5"),
    ],
)
def test_boxed_forms(text: str, expected: str) -> None:
    assert answer(text, strict=True) == expected


def test_boxed_answers_joined_by_or_are_read_together() -> None:
    assert answer(r"so $x = \boxed{2}$ or $x = \boxed{-3}$") == "2, -3"
    assert answer(r"\boxed{6} \text{ or } \boxed{8}") == "6, 8"
    assert answer(r"\boxed{6}, \boxed{6}") == "6"
    # far apart: an intermediate result, then the final answer
    assert answer(r"part one gives \boxed{6}; moving on to the second part we get \boxed{8}") == "8"


def test_unclosed_final_box_gives_no_answer_even_after_a_closed_one() -> None:
    assert answer(r"\boxed{3} and the total is \boxed{12") is None
    assert answer(r"the total is \boxed{\frac{1}{2") is None


def test_answer_tags() -> None:
    assert answer("<reasoning>3+4=7</reasoning>\n<answer>\n7\n</answer>", "answer_tag", strict=True) == "7"
    assert answer(r"<answer>so \boxed{7}</answer>", "answer_tag", strict=True) == "7"
    assert answer("<answer>1</answer> then <answer>2", "answer_tag", strict=True) is None  # cut off


def test_gsm8k_hash() -> None:
    assert answer("6*7=42\n#### 1,234\n", "hash", strict=True) == "1,234"
    assert answer("#### 40\nwait\n#### 42", "hash", strict=True) == "42"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 3.5. Done.", "3.5"),
        ("the final answer is: $\\frac{1}{2}$.", "$\\frac{1}{2}$"),
        ("**Answer:** 12", "12"),
        ("Answer = 4", "4"),
        ("The answer is \\boxed{9} for sure", "9"),
    ],
)
def test_the_answer_is(text: str, expected: str) -> None:
    assert answer(text, "answer_is", strict=True) == expected


def test_prose_mentioning_answer_is_not_an_answer_marker() -> None:
    assert answer("Let me answer this question carefully: 5 + 7 = 12.") is None


def test_bare_formula_only_in_lenient_mode() -> None:
    assert answer("$x = 3$") == "x = 3"
    assert answer("$x = 3$", strict=True) is None
    assert answer("First 5 + 7 = 12, then I stopped.") is None  # no marker: numbers in prose are not answers


def test_strict_mode_only_accepts_the_requested_form() -> None:
    text = "The answer is 9."
    assert answer(text, strict=True) is None
    assert answer(text, strict=False) == "9"
    assert answer("<answer>9</answer> and \\boxed{8}", "answer_tag", strict=False) == "9"  # requested form first
    with pytest.raises(ValueError, match="unknown answer form"):
        extract_answer("x", requested="xml")


def test_only_the_tail_of_a_huge_response_is_searched() -> None:
    assert answer("\\boxed{1}" + "x" * 100_000) is None
    assert answer("x" * 100_000 + "\\boxed{1}") == "1"


def test_routing_by_data_source() -> None:
    assert route("openai/gsm8k") == ("gsm8k", "hash")
    assert route("DigitalLearningGmbH/MATH-lighteval") == ("math", "boxed")
    assert route("lighteval/MATH") == ("math", "boxed")
    assert route("HuggingFaceH4/MATH-500") == ("math", "boxed")
    assert route("synthetic/arith") == ("math", "boxed")  # "arith" must not match the "arc" benchmark
    assert route("allenai/ai2_arc") == ("choice", "boxed")
    assert route("cais/mmlu") == ("choice", "boxed")
    assert route("something/new") == ("math", "boxed")
    assert route("openai/gsm8k", {"answer_format": "answer_tag"}) == ("gsm8k", "answer_tag")
    with pytest.raises(ValueError, match="answer_format"):
        compute_score("openai/gsm8k", "#### 1", "1", {"answer_format": "xml"})


def test_truncated_response_is_incorrect_even_with_a_right_box() -> None:
    text = r"So the total is $\boxed{12}$ and"
    assert compute_score("lighteval/MATH", text, "12")["acc"] is True
    assert compute_score("lighteval/MATH", text, "12", {"truncated": True})["acc"] is False
    assert compute_score("lighteval/MATH", text, "12", {"finish_reason": "length"})["acc"] is False


def test_ground_truth_may_be_a_reference_solution_or_a_list() -> None:
    assert compute_score("openai/gsm8k", "#### 72", "48 + 24 = 72 clips.\n#### 72")["acc"] is True
    assert compute_score("lighteval/MATH", r"\boxed{0.5}", r"so it is $\boxed{\frac12}$")["acc"] is True
    assert compute_score("lighteval/MATH", r"\boxed{3}", ["2", "3"])["acc"] is True
    assert compute_score("lighteval/MATH", r"\boxed{3}", 3)["acc"] is True
