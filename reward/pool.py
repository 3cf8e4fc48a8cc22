"""A persistent pool of grading processes with a hard per-item wall-clock budget.

Why not multiprocessing.Pool: its tasks cannot be cancelled, a hung task blocks its worker for
good, and its spawn start method re-imports the trainer's __main__ (torch and all) in every
worker. Here each worker is a plain `python -m reward.worker` subprocess fed one item at a time
over a pipe; the parent waits with select() and, when an item overruns `timeout_s + grace`,
kills that worker, records a timeout and starts a replacement. No signals are involved, so the
budget holds when scoring is called from any thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any

from reward.scoring import RewardError, ScorerSpec

# The worker's cooperative budget normally answers first; the kill is the backstop a little later.
GRACE_FRACTION, GRACE_MIN_S = 0.1, 0.1
START_TIMEOUT_S = 120.0


def _jsonable(value: Any) -> Any:
    """numpy scalars / arrays from parquet rows become plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


class _Worker:
    def __init__(self, spec_line: bytes) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # so the child imports this same package
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reward.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # Ctrl-C in the trainer's terminal does not hit the workers
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.ready = False
        self.started = time.monotonic()
        self.item: int | None = None  # index of the item being graded
        self.deadline = 0.0
        self.proc.stdin.write(spec_line)
        self.proc.stdin.flush()

    def send(self, line: bytes) -> bool:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def read_messages(self) -> list[dict[str, Any]] | None:
        """Complete messages received so far; None when the worker has exited."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _shutdown(workers: list[_Worker]) -> None:
    for w in workers:
        w.kill()


class GradingPool:
    """`map(items)` grades verl-style argument tuples in `num_workers` persistent processes."""

    def __init__(self, spec: ScorerSpec, num_workers: int) -> None:
        if num_workers < 1:
            raise ValueError(f"reward.num_workers must be >= 1 for a pool, got {num_workers}")
        self.spec = spec
        self._spec_line = (json.dumps({"spec": spec.to_json()}) + "\n").encode()
        self._lock = threading.Lock()
        self._workers = [_Worker(self._spec_line) for _ in range(num_workers)]
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    def map(self, items: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """One result per item, in order; an item over budget gets {"timeout": True, "acc": False}."""
        with self._lock:
            if not self._finalizer.alive:
                raise RewardError("the grading pool is closed")
            try:
                return self._map(items)
            except BaseException:  # no worker may stay busy with an item of this failed call
                with selectors.DefaultSelector() as sel:
                    for w in list(self._workers):
                        sel.register(w.fd, selectors.EVENT_READ, w)
                        if w.item is not None:
                            w.item = None
                            self._replace(sel, w, [])
                raise

    def _map(self, items: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(items)
        pending = deque(range(len(items)))
        budget = self.spec.timeout_s * (1 + GRACE_FRACTION) + GRACE_MIN_S
        with selectors.DefaultSelector() as sel:
            for w in self._workers:
                sel.register(w.fd, selectors.EVENT_READ, w)
            while pending or any(w.item is not None for w in self._workers):
                for w in self._workers:
                    if w.ready and w.item is None and pending:
                        k = pending.popleft()
                        line = json.dumps({"id": k, "args": list(items[k])}, default=_jsonable) + "\n"
                        w.item, w.deadline = k, time.monotonic() + budget
                        if not w.send(line.encode()):
                            pending.appendleft(k)
                            self._replace(sel, w, results, crashed=True)
                now = time.monotonic()
                waits = [w.deadline - now for w in self._workers if w.item is not None]
                waits += [w.started + START_TIMEOUT_S - now for w in self._workers if not w.ready]
                for key, _ in sel.select(timeout=max(0.0, min(waits, default=1.0))):
                    self._receive(sel, key.data, results)
                now = time.monotonic()
                for w in list(self._workers):
                    if w.item is not None and now > w.deadline:
                        results[w.item] = {"score": self.spec.tiers.incorrect, "acc": False, "timeout": True}
                        w.item = None
                        self._replace(sel, w, results)
                    elif not w.ready and now > w.started + START_TIMEOUT_S:
                        raise RewardError(f"a grading worker did not start within {START_TIMEOUT_S:.0f} s")
        return [r if r is not None else {} for r in results]

    def _receive(self, sel: selectors.BaseSelector, w: _Worker, results: list[dict[str, Any] | None]) -> None:
        messages = w.read_messages()
        if messages is None:
            if not w.ready:
                raise RewardError("a grading worker exited during start-up (see its stderr above)")
            self._replace(sel, w, results, crashed=True)
            return
        for message in messages:
            if "fatal" in message:
                raise RewardError(f"grading worker could not build the reward: {message['fatal']}")
            if message.get("ready"):
                w.ready = True
            elif "error" in message:
                raise RewardError(f"reward function raised on item {message['id']}:\n{message['error']}")
            elif message.get("id") == w.item:
                results[w.item] = message["result"]
                w.item = None

    def _replace(
        self, sel: selectors.BaseSelector, w: _Worker, results: list[dict[str, Any] | None], crashed: bool = False
    ) -> None:
        """Kill `w` and start a fresh worker in its place (its current item fails)."""
        if crashed and w.item is not None:
            results[w.item] = {"score": self.spec.tiers.incorrect, "acc": False, "timeout": False, "crashed": True}
            w.item = None
        sel.unregister(w.fd)
        w.kill()
        fresh = _Worker(self._spec_line)
        self._workers[self._workers.index(w)] = fresh
        sel.register(fresh.fd, selectors.EVENT_READ, fresh)

    def close(self) -> None:
        """Stop all workers; the pool cannot be used afterwards."""
        with self._lock:
            self._finalizer()
