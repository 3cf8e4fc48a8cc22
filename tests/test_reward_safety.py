"""Model output is untrusted: adversarial and random input is graded quickly, without exceptions,
without executing anything and without touching the file system."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reward import compute_score, grade
from reward.limits import GradeTimeout, time_budget

ROOT = Path(__file__).resolve().parents[1]
_WATCHED = {
    "os.system", "subprocess.Popen", "os.posix_spawn", "os.exec", "os.fork", "os.remove", "os.rename",
    "os.rmdir", "os.mkdir", "shutil.rmtree", "socket.connect", "ctypes.dlopen", "os.chmod",
}  # fmt: skip
_suspicious: list[str] = []
_recording = False


def _audit(event: str, args: tuple) -> None:
    """Record side effects and code execution while grading (audit hooks cannot be removed, so it
    stays installed for the session and is only active inside `watch_side_effects`)."""
    if not _recording:
        return
    if event == "open":
        path, mode, flags = args
        if (mode and any(c in mode for c in "wax+")) or (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            _suspicious.append(f"open for writing: {path}")
    elif event == "compile" and not str(args[1]).endswith(".py"):
        _suspicious.append(f"compile of {args[1]}")  # eval / exec of a string
    elif event == "exec" and not getattr(args[0], "co_filename", "").endswith(".py"):
        _suspicious.append("exec of dynamically built code")
    elif event in _WATCHED:
        _suspicious.append(event)


sys.addaudithook(_audit)


@contextmanager
def watch_side_effects() -> Iterator[list[str]]:
    global _recording
    _suspicious.clear()
    _recording = True
    try:
        yield _suspicious
    finally:
        _recording = False


def _warm_up() -> None:
    """Import every sympy module the grader uses before watching (imports execute module code)."""
    for response, truth in [
        (r"\boxed{\frac{\sqrt2}{2}}", r"\frac{1}{\sqrt2}"), (r"\boxed{x^2+2x+1}", "(x+1)^2"),
        (r"\boxed{(1,2]}", "(1,2]"), (r"\boxed{3+4i}", "4i+3"), (r"\boxed{\binom{n}{2}}", "n(n-1)/2"),
        (r"\boxed{\sin^2 x+\cos^2 x}", "1"), (r"\boxed{\log_2 8}", "3"), (r"\boxed{\lfloor 2.5\rfloor}", "2"),
        (r"\boxed{|x|!}", "x"), (r"\boxed{e^{i\pi}}", "-1"), (r"\boxed{\sqrt[3]{-8}}", "-2"),
        (r"\boxed{\arcsin x + \tan x + \sec x + \cosh x}", "1"),
    ]:  # fmt: skip
        compute_score("lighteval/MATH", response, truth)


ADVERSARIAL = [
    r"\boxed{9^{9^{9^9}}}",
    r"\boxed{10**10**10}",
    "The answer is 10**10**10**10",
    r"\boxed{" + "1+" * 50_000 + "1}",  # a 100k-character sum
    "1+" * 50_000 + "1",
    r"\boxed{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{1}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}",
    r"\boxed{" * 5_000,  # unbalanced braces
    r"\boxed{1}}}}}}}}}}}" + "}" * 5_000,
    "\\boxed{__import__('os').system('touch pwned')}",
    "The answer is __import__('os').system('touch pwned')",
    r"\input{/etc/passwd} \boxed{\input{/etc/passwd}}",
    r"\boxed{\write18{touch pwned}}",
    r"\boxed{\def\x{\x}\x}",
    r"\boxed{(2^{2000})^{2000}}",
    r"\boxed{1000000!}",
    r"\boxed{\binom{10^{9}}{5 \cdot 10^{8}}}",
    r"\boxed{\sqrt{" + "9" * 200 + "}}",
    r"\boxed{" + r"\sqrt{" * 300 + "2" + "}" * 300 + "}",
    r"\boxed{" + "(" * 3_000 + "1" + ")" * 3_000 + "}",
    r"\boxed{" + "-" * 3_000 + "1}",
    r"\boxed{x^{10^{10}} - x^{10^{10}}}",
    r"\boxed{" + "x" * 5_000 + "}",
    r"\boxed{" + "1 m " * 500 + "}",
    r"\boxed{\begin{pmatrix}" + "1&" * 3_000 + r"1\end{pmatrix}}",
    "<answer>" * 10_000,
    "answer is " * 10_000,
    "#### " * 10_000,
    "\x00\x01\x02 \\boxed{\x00}",
]


@pytest.mark.parametrize("response", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_input_is_graded_incorrect_quickly(
    response: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _warm_up()
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with watch_side_effects() as effects:
        for truth in ("7", r"\frac{1}{3}", "y"):  # equal to none of the inputs
            result = compute_score("lighteval/MATH", response, truth, strict=False, timeout_s=5.0)
            assert result["acc"] is False and result["timeout"] == 0.0 and result["error"] == 0.0
    assert time.perf_counter() - start < 2.0
    assert effects == []
    assert list(tmp_path.iterdir()) == []


TOKENS = [
    r"\frac", r"\dfrac", r"\sqrt", r"\boxed", r"\fbox", "{", "}", "(", ")", "[", "]", "^", "_", "+", "-", "*",
    "/", "=", "<", ">", r"\le", r"\ge", r"\neq", ",", ";", "&", r"\\", r"\begin{pmatrix}", r"\end{pmatrix}",
    r"\begin{array}{cc}", r"\end{array}", r"\pi", "e", "i", "x", "y", "n", r"\infty", r"\cup", r"\pm", r"\in",
    "!", "%", r"\%", "0", "1", "2", "9", "12", "3.5", "1e5", ".", r"\overline", r"\text", r"\mathbb", "R",
    r"\left", r"\right", "$", "####", "<answer>", "</answer>", "The answer is ", " or ", " ", "\n", r"\{", r"\}",
    r"\input{/etc/passwd}", "__import__('os').system('touch pwned')", "**", "9^{9^{9^9}}", r"\sin", r"\log_",
    r"\binom", "|", r"\lfloor", r"\rfloor", r"\circ", r"\$", "cm", "Monday", "(A)", r"\cdot", r"\times",
]  # fmt: skip
TRUTHS = ["1", "-2", r"\frac{1}{2}", "0.25", "x^2+1", "(1,2]", r"\{1,2\}", "(3,-1)", "3+4i", r"\pi", r"\infty", "C",
          r"\begin{pmatrix}1\\2\end{pmatrix}", "x=3", r"25\%", r"\text{Monday}"]  # fmt: skip
token_text = st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)
any_text = st.text(max_size=400)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    response=st.one_of(token_text, any_text),
    truth=st.one_of(st.sampled_from(TRUTHS), token_text),
    source=st.sampled_from(["lighteval/MATH", "openai/gsm8k", "mmlu", "synthetic/arith", "other"]),
    strict=st.booleans(),
)
def test_fuzz_no_exception_no_hang_no_side_effect(
    response: str, truth: str, source: str, strict: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _warm_up()
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with watch_side_effects() as effects:
        try:
            with time_budget(3.0):
                result = grade(source, response, truth, strict=strict)  # no catch-all: any bug fails here
        except GradeTimeout:
            pytest.fail(f"grading hung: {response[:200]!r} vs {truth!r}")
    assert time.perf_counter() - start < 3.0
    assert isinstance(result["acc"], bool) and isinstance(result["score"], float)
    assert effects == []
    assert list(tmp_path.iterdir()) == []
    assert not (ROOT / "pwned").exists()


def test_importing_the_reward_is_fast_and_pulls_neither_torch_nor_sympy() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import reward, npu_rl.reward_manager; "
        "print(time.perf_counter() - t, 'torch' in sys.modules, 'sympy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    seconds, torch_loaded, sympy_loaded = out.stdout.split()
    assert (torch_loaded, sympy_loaded) == ("False", "False")
    assert float(seconds) < 1.0


def test_source_never_evaluates_or_sympifies_text() -> None:
    for path in (ROOT / "reward").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        for banned in ("eval(", "exec(", "sympify(", "parse_expr(", "parse_latex(", "lambdify(", "__import__("):
            assert banned not in source, f"{path.name} uses {banned}"
