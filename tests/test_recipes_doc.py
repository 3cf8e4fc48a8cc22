"""docs/algorithms.md's recipe lines stay valid: each one's overrides load on top of the sample's config."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from npu_rl.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def recipe_lines() -> list[str]:
    text = (ROOT / "docs" / "algorithms.md").read_text()
    section = text.split("## Recipes as overrides", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if "bash run/" in line]


def test_the_recipes_section_has_its_lines():
    assert len(recipe_lines()) >= 12


@pytest.mark.parametrize("line", recipe_lines(), ids=lambda line: line.split("sh ", 1)[1][:40])
def test_each_recipe_loads_on_the_sample_config(line, tiny_model_dir, tmp_path):
    words = shlex.split(line)
    script = words[words.index("bash") + 1]
    assert (ROOT / script).is_file(), script
    overrides = words[words.index("bash") + 2 :]
    base = [f"model.path={tiny_model_dir}", f"data.train_files=[{tmp_path / 'train.parquet'}]"]
    load_config(ROOT / "npu_rl" / "configs" / "qwen2_5_1_5b_grpo.yaml", [*base, *overrides])
