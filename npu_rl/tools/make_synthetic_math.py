"""Synthetic two-step arithmetic word problems, written from our own templates, in verl's parquet schema.

One module produces everything the offline demo needs from the same problems: the RL prompts
(train/test parquet), the worked step-by-step solutions and the bare shortcut answers used to
pre-train the tiny base model, and the text the tokenizer is trained on. Keeping them in one place
means the model is pre-trained on exactly the answer format the reward later grades.

Everything is deterministic from a seed. The test split is disjoint from the train split (and from
every pre-training example) by problem identity: the template kind plus its operands.

Usage: npu-rl-make-synthetic-math --out-dir assets/data/synthetic [--n-train 2000 --n-test 200]
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from npu_rl.cli import UserError, entry_point

DATA_SOURCE = "synthetic/arith"
INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."

NAMES = ["Ana", "Ben", "Cleo", "Dev", "Eva", "Finn", "Gia", "Hugo", "Ines", "Jon", "Kira", "Leo"]
ProblemKey = tuple[str, tuple[int, ...]]  # template kind, operands

ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "shells", "cards", "coins", "stamps"]


@dataclass(frozen=True)
class Problem:
    """One word problem with its exact solution path.

    `steps` are the equations a careful solver writes ("12 + 7 = 19"); the worked solution is those
    steps followed by the boxed answer, the shortcut is the boxed answer alone.
    """

    kind: str
    numbers: tuple[int, ...]
    question: str
    steps: tuple[str, ...]
    answer: int

    @property
    def key(self) -> ProblemKey:
        """Identity used to keep splits disjoint: same template kind and operands = same problem."""
        return (self.kind, self.numbers)

    @property
    def level(self) -> int:
        return len(self.steps)

    @property
    def prompt(self) -> str:
        return f"{self.question} {INSTRUCTION}"

    def worked(self) -> str:
        return " ".join(f"{s}." for s in self.steps) + f" {self.shortcut()}"

    def shortcut(self) -> str:
        return f"The answer is \\boxed{{{self.answer}}}."


OPS: dict[str, Callable[[int, int], int]] = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


@dataclass(frozen=True)
class Template:
    """A two-step problem family: (a op1 b) op2 c, an operand sampler and its story wordings.

    The sampler keeps every intermediate value and the answer non-negative.
    """

    ops: tuple[str, str]
    sample: Callable[[random.Random], tuple[int, int, int]]
    questions: tuple[str, ...]  # str.format fields: name, item, a, b, c


# Operand ranges keep each step's table of arithmetic facts small (a few hundred entries, shared
# between kinds), so a 1.7M-parameter model learns to work the steps within a few hundred pre-training
# steps, while jumping straight to the answer (composing both operations at once) stays hard.
def _add_then_sub(rng: random.Random) -> tuple[int, int, int]:
    a, b = rng.randint(2, 12), rng.randint(1, 9)
    return a, b, rng.randint(1, a + b)


def _sub_then_add(rng: random.Random) -> tuple[int, int, int]:
    a = rng.randint(2, 20)
    return a, rng.randint(1, a - 1), rng.randint(1, 9)


def _mul_then_add(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(2, 6), rng.randint(2, 9), rng.randint(1, 9)


def _mul_then_sub(rng: random.Random) -> tuple[int, int, int]:
    k, b = rng.randint(2, 6), rng.randint(2, 9)
    return k, b, rng.randint(1, min(9, k * b))


KINDS: dict[str, Template] = {
    "add_sub": Template(
        ("+", "-"),
        _add_then_sub,
        (
            "{name} has {a} {item}, gets {b} more and gives away {c}. How many {item} are left?",
            "A box holds {a} {item}. {name} puts in {b} and takes out {c}. How many are in the box?",
        ),
    ),
    "sub_add": Template(
        ("-", "+"),
        _sub_then_add,
        (
            "{name} has {a} {item}, loses {b} and then finds {c}. How many {item} now?",
            "A table has {a} {item}. {name} takes {b} away and adds {c}. How many are on it?",
        ),
    ),
    "mul_add": Template(
        ("*", "+"),
        _mul_then_add,
        (
            "{name} buys {a} bags of {b} {item} and already had {c}. How many {item} in total?",
            "There are {a} rows of {b} {item} and {c} more beside them. How many {item} altogether?",
        ),
    ),
    "mul_sub": Template(
        ("*", "-"),
        _mul_then_sub,
        (
            "{name} fills {a} boxes with {b} {item} each and gives away {c}. How many are left?",
            "A shop has {a} packs of {b} {item} and sells {c}. How many {item} remain?",
        ),
    ),
}


def sample_problem(rng: random.Random) -> Problem:
    kind = rng.choice(sorted(KINDS))
    template = KINDS[kind]
    a, b, c = template.sample(rng)
    question = rng.choice(template.questions).format(name=rng.choice(NAMES), item=rng.choice(ITEMS), a=a, b=b, c=c)
    op1, op2 = template.ops
    mid = OPS[op1](a, b)
    answer = OPS[op2](mid, c)
    steps = (f"{a} {op1} {b} = {mid}", f"{mid} {op2} {c} = {answer}")
    return Problem(kind=kind, numbers=(a, b, c), question=question, steps=steps, answer=answer)


def iter_problems(seed: int, exclude: Set[ProblemKey] = frozenset()) -> Iterator[Problem]:
    """Endless stream of problems whose key is not in `exclude` (repeats among themselves allowed)."""
    rng = random.Random(seed)
    while True:
        problem = sample_problem(rng)
        if problem.key not in exclude:
            yield problem


def make_splits(n_train: int, n_test: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Distinct problems; the test split first, then train problems none of which shares a test key.

    The templates allow a few thousand distinct problems; asking for more is an error, not a hang.
    """
    rng = random.Random(seed)
    seen: set[ProblemKey] = set()
    picked: list[Problem] = []
    misses = 0
    while len(picked) < n_train + n_test:
        problem = sample_problem(rng)
        if problem.key in seen:
            misses += 1
            if misses > 10_000:
                raise ValueError(
                    f"asked for {n_train} train + {n_test} test problems, but the templates gave only "
                    f"{len(picked)} distinct ones; ask for fewer rows"
                )
            continue
        misses = 0
        seen.add(problem.key)
        picked.append(problem)
    return picked[n_test:], picked[:n_test]


def to_row(problem: Problem, split: str, index: int) -> dict:
    """One row in verl's schema; the ground truth is the integer answer as a string."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": problem.prompt}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(problem.answer)},
        "extra_info": {
            "split": split,
            "index": index,
            "kind": problem.kind,
            "level": problem.level,
            "operands": list(problem.numbers),
            "question": problem.question,
        },
    }


def write_parquet(problems: list[Problem], split: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([to_row(p, split, i) for i, p in enumerate(problems)])
    pq.write_table(table, path)
    return path


def write_splits(out_dir: str | Path, n_train: int, n_test: int, seed: int) -> dict[str, Path]:
    """Write `train.parquet` and `test.parquet` under `out_dir`; returns their paths by split."""
    train, test = make_splits(n_train, n_test, seed)
    out_dir = Path(out_dir)
    return {
        "train": write_parquet(train, "train", out_dir / "train.parquet"),
        "test": write_parquet(test, "test", out_dir / "test.parquet"),
    }


def row_key(row: dict) -> ProblemKey:
    """The problem identity (`Problem.key`) of a parquet row written by `to_row`."""
    return (row["extra_info"]["kind"], tuple(row["extra_info"]["operands"]))


def is_worked(response: str) -> bool:
    """Whether a response shows its work (at least one equation) rather than a bare answer."""
    return " = " in response


def tokenizer_corpus(seed: int, n: int) -> list[str]:
    """Plain texts covering every template, the instruction and both answer styles, for BPE training."""
    texts = ["system", "user", "assistant", INSTRUCTION]
    for problem, _ in zip(iter_problems(seed), range(n), strict=False):
        texts += ["user", "assistant", problem.prompt, problem.worked(), problem.shortcut()]
    return texts


@entry_point("npu-rl-make-synthetic-math")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default="assets/data/synthetic")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        paths = write_splits(args.out_dir, args.n_train, args.n_test, args.seed)
    except ValueError as err:  # more rows asked for than the templates allow
        raise UserError(str(err)) from err
    for split, path in paths.items():
        print(f"{split}: {path} ({pq.read_metadata(path).num_rows} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
