"""Runs that cannot be mixed up, lost or poisoned: real training processes killed, signalled and run twice.

Every test here runs `python -m npu_rl.train` on the tiny model (tests/_train_proc.py) or the trainer
in-process, and reads back what a user would: exit status, messages, metrics.jsonl, checkpoints.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import warnings

import pytest
import torch
from _train_proc import final_weights, metrics, stable, start, train, train_args, wait_for
from test_trainer import run

from npu_rl.config import load_config
from npu_rl.config.environment import looks_local
from npu_rl.model import source_kwargs
from npu_rl.resume import ConfigChangeError, reconcile_log
from npu_rl.run_guard import LOCK_NAME, NonFiniteError, RunLock, RunLockedError
from npu_rl.trainer import GRPOTrainer

# Kills itself with SIGKILL right after the step-N row is durable and before checkpoint N is published.
KILL_BEFORE_PUBLISH = textwrap.dedent(
    """
    import os, signal, sys
    from npu_rl import checkpoint, train

    kill_at = int(os.environ["KILL_AT_STEP"])
    publish = checkpoint.CheckpointManager._publish

    def dying_publish(self, tmp, final, step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        publish(self, tmp, final, step)

    checkpoint.CheckpointManager._publish = dying_publish
    train.main(sys.argv[1:])
    """
)


def kill_before_publish(args: list[str], step: int) -> None:
    """Train with `args` until SIGKILL right after step `step` is logged, before its checkpoint is published."""
    os.environ["KILL_AT_STEP"] = str(step)
    try:
        proc = train(args, code=KILL_BEFORE_PUBLISH)
    finally:
        del os.environ["KILL_AT_STEP"]
    assert proc.returncode == -9, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_dir, synthetic_parquet):
    """An uninterrupted 4-step run: the reference for every interrupted one."""
    run_dir = tmp_path_factory.mktemp("straight")
    proc = train(train_args(run_dir, tiny_model_dir, synthetic_parquet))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_kill_between_log_and_publish_loses_nothing_and_duplicates_nothing(
    tmp_path, tiny_model_dir, synthetic_parquet, straight
):
    args = train_args(tmp_path, tiny_model_dir, synthetic_parquet)
    kill_before_publish(args, 2)
    assert [r["step"] for r in metrics(tmp_path)] == [0, 1, 2]  # step 2 was logged (durably) before the kill
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "1"

    resumed = train(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "moved 1 rows after step 1" in resumed.stdout
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]  # no gap, no duplicate
    assert stable(rows) == stable(metrics(straight))  # the resumed step 2 is the same step 2
    discarded = (tmp_path / "logs" / "metrics.discarded.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in discarded] == [2]
    a, b = final_weights(straight, 4), final_weights(tmp_path, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = sorted(p.name for p in (tmp_path / "logs" / "config.history").iterdir())
    assert len(history) == 2 and history[0].startswith("0001-") and history[1].startswith("0002-")


@pytest.mark.slow
def test_ppo_killed_9_and_resumed_reproduces_the_uninterrupted_run_critic_included(
    tmp_path, tiny_model_dir, synthetic_parquet
):
    """PPO with a critic, SIGKILLed after step 3 is logged and before it is published: the resumed run
    ends with the uninterrupted run's actor and critic weights and metrics (issue 11)."""
    ppo = ("algorithm.adv_estimator=gae", "critic.optim.lr=1e-3", "trainer.test_freq=0")
    straight_dir = tmp_path / "straight"
    done = train(train_args(straight_dir, tiny_model_dir, synthetic_parquet, *ppo))
    assert done.returncode == 0, done.stderr[-3000:]
    args = train_args(tmp_path / "killed", tiny_model_dir, synthetic_parquet, *ppo)
    kill_before_publish(args, 3)
    assert (tmp_path / "killed" / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    resumed = train(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert stable(metrics(tmp_path / "killed")) == stable(metrics(straight_dir))
    assert "critic/vf_loss" in metrics(straight_dir)[-1]
    for role in ("actor", "critic"):
        a, b = final_weights(straight_dir, 4, role), final_weights(tmp_path / "killed", 4, role)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), role


@pytest.mark.slow
def test_second_run_on_the_same_directories_is_refused_and_a_dead_runs_lock_is_taken_over(
    tmp_path, tiny_model_dir, synthetic_parquet
):
    args = train_args(tmp_path, tiny_model_dir, synthetic_parquet, steps=200)
    first = start(args, tmp_path / "first.log")
    try:
        lock = tmp_path / "logs" / LOCK_NAME
        wait_for(lambda: lock.exists() and str(first.pid) in lock.read_text(), proc=first)
        wait_for(lambda: len(metrics(tmp_path)) >= 2, proc=first)  # it is training
        second = train(args)
        assert second.returncode != 0
        assert "is in use by another run" in second.stderr and f"pid {first.pid} on" in second.stderr
        assert len(list((tmp_path / "logs" / "config.history").iterdir())) == 1  # the refused run recorded nothing
        steps = [r["step"] for r in metrics(tmp_path)]
        assert steps == sorted(set(steps))  # no interleaved rows
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -9  # the first run was still alive, untouched by the second
    # the dead run's lock file still names it; the next run takes it over
    assert str(first.pid) in (tmp_path / "logs" / LOCK_NAME).read_text()
    third = train(train_args(tmp_path, tiny_model_dir, synthetic_parquet, steps=3))
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"took over {tmp_path / 'logs' / LOCK_NAME} from pid {first.pid}" in third.stdout
    assert (tmp_path / "logs" / LOCK_NAME).read_text() == ""  # released at the end


def test_run_lock_in_process(tmp_path):
    lock = RunLock([tmp_path / "a", tmp_path / "a", tmp_path / "b"])  # a directory listed twice is locked once
    with pytest.raises(RunLockedError, match=rf"{tmp_path / 'b'} is in use by another run: pid {os.getpid()}"):
        RunLock([tmp_path / "b"])
    lock.release()
    RunLock([tmp_path / "b"]).release()


def _training(run_dir, model_dir, data, *extra):
    """A long run without periodic saves, started in the background and past its first step."""
    args = train_args(run_dir, model_dir, data, "trainer.save_freq=-1", *extra, steps=200)
    proc = start(args, run_dir / "run.log")
    wait_for(lambda: any(r["step"] >= 1 for r in metrics(run_dir)), proc=proc)
    return proc


@pytest.mark.slow
def test_sigterm_saves_and_exits_then_resume_continues(tmp_path, tiny_model_dir, synthetic_parquet):
    proc = _training(tmp_path, tiny_model_dir, synthetic_parquet)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    out = (tmp_path / "run.log").read_text()
    assert "SIGTERM received: finishing the current step" in out and "Run the same command again" in out
    last = metrics(tmp_path)[-1]["step"]
    marker = tmp_path / "ckpt" / "latest_checkpointed_iteration.txt"
    assert int(marker.read_text()) == last  # save_freq=-1, yet the work up to the signal is saved

    resumed = train(train_args(tmp_path, tiny_model_dir, synthetic_parquet, "trainer.save_freq=-1", steps=last + 1))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {last}" in resumed.stdout
    assert [r["step"] for r in metrics(tmp_path)][-2:] == [last, last + 1]


@pytest.mark.slow
def test_second_sigterm_exits_at_once(tmp_path, tiny_model_dir, synthetic_parquet):
    # long responses (the random model rarely stops): seconds per step, so the second signal lands mid-step
    proc = _training(tmp_path, tiny_model_dir, synthetic_parquet, "rollout.max_new_tokens=400", "rollout.n=8")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM received" in (tmp_path / "run.log").read_text(), timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == -signal.SIGTERM
    assert "second SIGTERM: exiting now" in (tmp_path / "run.log").read_text()


# ---------------------------------------------------------------------------------------------
# In-process runs


def _cfg(tmp_path, tiny_model_dir, synthetic_parquet, *extra, steps=2):
    return load_config(None, train_args(tmp_path, tiny_model_dir, synthetic_parquet, *extra, steps=steps))


@pytest.mark.slow
def test_changed_config_on_resume_is_refused_or_applied_explicitly(tmp_path, tiny_model_dir, synthetic_parquet, capsys):
    run(_cfg(tmp_path, tiny_model_dir, synthetic_parquet, "trainer.test_freq=-1"))
    capsys.readouterr()
    for change in ("actor.optim.lr=5e-4", "trainer.seed=7", "rollout.n=2", "actor.optim.lr_scheduler=cosine"):
        cfg = _cfg(tmp_path, tiny_model_dir, synthetic_parquet, "trainer.test_freq=-1", change, steps=3)
        with pytest.raises(ConfigChangeError, match=r"trainer\.allow_config_change=true") as err:
            GRPOTrainer(cfg)
        assert change.split("=")[0] in str(err.value)
        assert f"{change.split('=')[0]}:" in capsys.readouterr().out  # the diff was printed
    assert len(list((tmp_path / "logs" / "config.history").iterdir())) == 1  # refused starts record nothing

    # an unprotected change is shown and applied; a protected one applies explicitly when allowed
    cfg = _cfg(
        tmp_path, tiny_model_dir, synthetic_parquet, "trainer.test_freq=-1", "actor.optim.lr=5e-4",
        "trainer.allow_config_change=true", "rollout.temperature=0.9", steps=3,
    )  # fmt: skip
    trainer = run(cfg)
    out = capsys.readouterr().out
    assert "actor.optim.lr: 0.001 -> 0.0005   [the restored optimizer would keep the old base LR]" in out
    assert "rollout.temperature: 1.0 -> 0.9" in out and "applied from step 3 on: actor.optim.lr" in out
    assert metrics(tmp_path)[-1]["actor/lr"] == pytest.approx(5e-4)  # the new LR, from the resumed step
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    history = sorted((tmp_path / "logs" / "config.history").iterdir())
    assert len(history) == 2 and "lr: 0.0005" in (tmp_path / "logs" / "config.yaml").read_text()
    assert "lr: 0.001" in history[0].read_text() and "resumed from" in history[1].read_text()


@pytest.mark.slow
def test_nonfinite_gradients_skip_updates_then_stop_without_a_poisoned_checkpoint(
    tmp_path, tiny_model_dir, synthetic_parquet
):
    cfg = _cfg(
        tmp_path, tiny_model_dir, synthetic_parquet, "trainer.max_nonfinite_steps=2", "trainer.test_freq=-1",
        "trainer.val_before_train=false", steps=5,
    )  # fmt: skip
    trainer = GRPOTrainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    # an injected NaN gradient (e.g. an overflow in backward) on one weight
    trainer.model.model.norm.weight.register_hook(lambda grad: grad * float("nan"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(NonFiniteError, match=r"2 steps in a row \(trainer.max_nonfinite_steps=2\)"):
            try:
                trainer.fit()
            finally:
                trainer.close()
    # the schedule moves on over a skipped update (as verl's) without torch's misleading ordering warning
    assert not [w for w in seen if "lr_scheduler.step()" in str(w.message)]
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2] and all(r["actor/nonfinite_skipped"] == 2 for r in rows)
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())  # no update applied
    assert all(torch.isfinite(t).all() for t in final_weights(tmp_path, 1).values())
    assert not (tmp_path / "ckpt" / "global_step_2").exists()


@pytest.mark.slow
def test_huge_learning_rate_stops_the_run_and_never_publishes_nonfinite_weights(
    tmp_path, tiny_model_dir, synthetic_parquet
):
    cfg = _cfg(
        tmp_path, tiny_model_dir, synthetic_parquet, "actor.optim.lr=1e30", "trainer.max_nonfinite_steps=2",
        "trainer.test_freq=-1", "trainer.val_before_train=false", steps=6,
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"Lower actor\.optim\.lr"):
        run(cfg)
    for step_dir in (tmp_path / "ckpt").glob("global_step_*"):
        step = int(step_dir.name.split("_")[-1])
        assert all(torch.isfinite(t).all() for t in final_weights(tmp_path, step).values()), step_dir


# ---------------------------------------------------------------------------------------------
# Units


def test_reconcile_log_keeps_steps_up_to_the_checkpoint_once(tmp_path):
    log = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "v": s} for s in (0, 1, 2, 3)] + [{"step": 2, "v": 22}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "v"')  # a torn last line
    dropped, missing = reconcile_log(log, 2)
    assert dropped == 3 and missing == []  # step 3, the torn line and the older copy of step 2
    assert [json.loads(x) for x in log.read_text().splitlines()] == [
        {"step": 0, "v": 0}, {"step": 1, "v": 1}, {"step": 2, "v": 22},
    ]  # fmt: skip
    assert len((tmp_path / "metrics.discarded.jsonl").read_text().splitlines()) == 3
    log.write_text('{"step": 1}\n{"step": 3}\n')
    assert reconcile_log(log, 3) == (0, [2])  # a gap left by an older version is reported


def test_model_loader_never_asks_a_hub_for_a_local_looking_path(tmp_path, tiny_model_dir):
    assert source_kwargs(str(tiny_model_dir), "model.path") == {"local_files_only": True}
    for path in (str(tmp_path / "missing"), "./missing", "~/missing", "a/b/c", "org/name/"):
        assert looks_local(path), path
        with pytest.raises(FileNotFoundError, match="does not exist"):
            source_kwargs(path, "model.path")
    assert source_kwargs("Qwen/Qwen2.5-0.5B-Instruct", "model.path") == {}  # a Hub id stays a Hub id
    with pytest.raises(FileNotFoundError, match=r"model\.path is empty"):
        source_kwargs("", "model.path")
