"""bench/long_tail.py runs (tiny size, one repeat) in each of its modes, so the figures in
bench/README.md stay reproducible: padded/packed/budget, gradient checkpointing, the critic, the
chunked head."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "long_tail.py"
TINY = ["--size", "tiny", "--prompts", "2", "--n", "4", "--max-new-tokens", "48", "--repeats", "1", "--threads", "1"]


MODES = {
    "actor": ([], ["padded", "packed", "packed+budget"]),
    "checkpointing": (["--checkpointing"], ["plain+ckpt", "packed+ckpt", "packed"]),
    "critic": (["--critic"], ["padded", "packed", "packed+budget"]),
    "head-chunk": (["--head-chunk", "32", "--vocab", "4000"], ["packed", "packed+chunk"]),
}


@pytest.mark.slow  # four Python start-ups with torch and transformers (~35 s)
@pytest.mark.parametrize(("mode", "variants"), list(MODES.values()), ids=list(MODES))
def test_long_tail_bench_prints_every_variant(mode, variants):
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, *mode], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.split()}
    for name in variants:
        assert name in rows, proc.stdout
        assert float(rows[name][-1]) > 0  # step time relative to the first variant
    assert rows[variants[0]][-1] == "1.00"
    assert ("values s" if mode == ["--critic"] else "logprob s") in proc.stdout
