"""vLLM rollout backend (also vllm-ascend, which is vLLM plus a platform plugin, and vllm-cpu).

On a real card generation is most of a GRPO step, so this is the engine production runs use. It
is colocated with the trainer and follows the same `RolloutEngine` interface as the transformers
backend; the choices that matter:

- Where the engine lives. Under torchrun (a process group exists) every trainer rank hosts its
  share of the engine in-process with vLLM's `external_launcher` executor, as verl's SPMD mode
  does: `tensor_parallel_size` consecutive ranks form one tensor-parallel engine, the rest is data
  parallel, and a weight sync hands the trainer's tensors over by reference. In a plain single
  process there is no process group, and an in-process engine would create one (vLLM initialises
  torch.distributed for its world of one), changing what the trainer's distributed helpers see; so
  the engine then runs in vLLM's own worker process and buckets travel over its RPC channel.
- Logprobs. The engine runs with `logprobs_mode="processed_logprobs"`: the log-probability of each
  sampled token under the temperature-scaled distribution, which is what the trainer recomputes
  (`log_softmax(logits / T)`), so rollout/logprob_diff compares like with like. vLLM's default
  (raw logprobs, before temperature) would differ by construction whenever T != 1. With top-k /
  top-p / min_p or a repetition penalty on, the processed values are of the distribution really
  sampled (penalised, renormalised over the kept tokens) while the trainer's are not; the gap then
  shows in rollout/logprob_diff.
- Weight sync. `update_weights` streams the trainer's (name, full tensor) pairs in buckets of
  `rollout.weight_sync_bucket_mb` into the worker extension in `vllm_worker.py`, which reloads them
  layer by layer in place; at most one bucket (plus one incomplete fused layer inside vLLM) exists
  beyond the engine's own weights. The prefix cache is dropped afterwards because its KV was
  computed with the old weights.
- Memory hand-back. With `free_cache_engine` the engine sleeps at level 1 (weights offloaded to
  host, KV cache freed) while the trainer runs. Weights are woken before they are written: writing
  into slept memory corrupts it on non-CUDA backends (Ascend). Sleep does not exist on the CPU.
- An fp32 head (`model.fp32_lm_head`, npu_rl.head) is asked of vLLM with
  `hf_overrides={"head_dtype": "float32"}`, which vLLM honours for generation models since its PR
  #48390 (vLLM 0.32 has it); an engine that would silently keep a bf16 head is refused before it starts.
- Sampling params come only from the trainer (`generation_config="vllm"`): a model folder's
  generation_config.json (Qwen ships top_p 0.8, top_k 20, repetition penalty 1.05) is not applied.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from npu_rl.ascend_env import prepare_vllm_env
from npu_rl.config import RolloutConfig
from npu_rl.config.fields import ConfigError
from npu_rl.device import Accelerator
from npu_rl.distributed import DistInfo
from npu_rl.env_report import check_stack
from npu_rl.model import resolve_dtype
from npu_rl.rollout import eos_and_pad_ids
from npu_rl.rollout.base import RolloutOutput, SamplingParams, grouped

WORKER_EXTENSION = "npu_rl.rollout.vllm_worker.WeightSyncExtension"
CPU_KV_CACHE_CAP_BYTES = 2 * 1024**3  # KV cache ceiling on the CPU unless VLLM_CPU_KVCACHE_SPACE says otherwise
INSTALL_HINT = (
    "rollout.name=vllm needs vLLM: `bash tools/install_vllm_cpu.sh` on CPU, `pip install npu_rl[vllm]` on CUDA, "
    "vllm + vllm-ascend on Ascend (see docs/vllm.md for the tested versions)"
)


def import_vllm() -> Any:
    """Import vllm, or fail with what to install (or which installed versions do not fit together)."""
    check_stack()
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    return vllm


class VLLMRollout:
    """A vLLM engine colocated with this trainer rank, behind the `RolloutEngine` interface."""

    def __init__(
        self,
        cfg: RolloutConfig,
        model_path: str,
        tokenizer: Any,
        acc: Accelerator,
        dist: DistInfo,
        dtype: str = "auto",
        *,
        max_model_len: int | None = None,
        seed: int = 0,
        fp32_head: bool = False,
    ) -> None:
        """`max_model_len` bounds prompt + response (default: the model's context); `fp32_head`: the LM
        head's product in fp32 (model.fp32_lm_head)."""
        vllm = import_vllm()
        self.cfg = cfg
        self.acc = acc
        self.dist = dist
        self.bucket_bytes = max(1, cfg.weight_sync_bucket_mb) * 1024**2
        model_files = SimpleNamespace(generation_config=_generation_config(model_path))  # extra EOS ids live there
        self.eos_token_ids, self.pad_token_id = eos_and_pad_ids(tokenizer, model_files)
        self.in_process = dist.is_distributed
        self.sleep_enabled = cfg.free_cache_engine and acc.type != "cpu"
        prepare_vllm_env(self.sleep_enabled, acc.type)  # before the engine reads the allocator settings
        self._asleep = False
        self._weights_awake = False

        torch_dtype = resolve_dtype(dtype, acc)
        engine_args: dict[str, Any] = dict(
            model=model_path,
            tokenizer=_tokenizer_path(model_path, tokenizer),
            dtype=str(torch_dtype).removeprefix("torch."),
            seed=seed,
            tensor_parallel_size=cfg.tensor_parallel_size,
            enforce_eager=cfg.enforce_eager,
            max_num_seqs=cfg.max_num_seqs,
            max_model_len=max_model_len,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",
            worker_extension_cls=WORKER_EXTENSION,
            enable_sleep_mode=self.sleep_enabled,
            disable_log_stats=True,
        )
        if self.in_process:
            engine_args.update(
                distributed_executor_backend="external_launcher",
                data_parallel_size=dist.world_size // cfg.tensor_parallel_size,
            )
        engine_args.update(_optional_engine_args(cfg))
        if acc.type == "cpu":
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prefill
            # is split over engine steps: it rewinds the request's generator, which CPU generators cannot.
            if cfg.enable_chunked_prefill:
                print("[npu_rl] rollout.enable_chunked_prefill=true is ignored on the CPU (vllm-cpu: seeded prefills)")
            engine_args["enable_chunked_prefill"] = False
            if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                engine_args["kv_cache_memory_bytes"] = _cpu_kv_cache_bytes(
                    model_path, torch_dtype, cfg.max_num_seqs, max_model_len
                )
        else:
            check_engine_memory(cfg.gpu_memory_utilization, acc)
            engine_args["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        engine_args.update(cfg.engine_kwargs)  # the config refused the ones npu_rl derives (VLLM_ARGS_SET_HERE)
        if fp32_head and torch_dtype != torch.float32:
            check_fp32_head_support()
            engine_args["hf_overrides"] = {**engine_args.get("hf_overrides", {}), "head_dtype": "float32"}
        self.llm = vllm.LLM(**engine_args)
        self._vllm = vllm

    # ------------------------------------------------------------------------------------------
    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> RolloutOutput:
        """Sample `params.n` responses per prompt; `seeds` (one per prompt) make each prompt's samples
        reproducible whatever else shares the batch."""
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        mine = slice(0, len(prompts))
        if self.in_process and self.cfg.tensor_parallel_size > 1:
            prompts, seeds, mine = self._gather_tensor_parallel(prompts, seeds)
        if not prompts and not self.in_process:  # in-process engines step in lockstep: join even with nothing
            return _pack([], self.pad_token_id, params.n)

        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        request_seeds = [None] * len(prompts) if seeds is None else [_spread(s) for s in seeds]
        sampling = [self._vllm_params(params, seed) for seed in request_seeds]
        results = self.llm.generate(requests, sampling_params=sampling, use_tqdm=False)

        rows: list[tuple[list[int], list[float], str]] = []
        for result in results[mine]:
            completions = sorted(result.outputs, key=lambda c: c.index)
            if len(completions) != params.n:
                raise RuntimeError(f"vLLM returned {len(completions)} samples for a prompt, expected {params.n}")
            for c in completions:
                ids = list(c.token_ids)
                if c.logprobs is None or len(c.logprobs) != len(ids):
                    raise RuntimeError("vLLM returned no per-token logprobs; the engine must be built with logprobs")
                logps = [step[tok].logprob for step, tok in zip(c.logprobs, ids, strict=True)]
                rows.append((ids, logps, "length" if c.finish_reason == "length" else "stop"))
        return _pack(rows, self.pad_token_id, params.n)

    def _vllm_params(self, params: SamplingParams, seed: int | None) -> Any:
        return self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else 0,
            min_p=params.min_p,
            repetition_penalty=params.repetition_penalty,
            max_tokens=params.max_new_tokens,
            seed=seed,
            logprobs=0,  # the sampled token's logprob only
            stop_token_ids=self.eos_token_ids,
            detokenize=False,
        )

    def _gather_tensor_parallel(
        self, prompts: list[list[int]], seeds: list[int] | None
    ) -> tuple[list[list[int]], list[int] | None, slice]:
        """Tensor-parallel ranks must feed their shared engine identical requests: pool the group's
        prompts, generate them all, and keep this rank's slice."""
        import torch.distributed as torch_dist
        from vllm.distributed.parallel_state import get_tp_group

        group = get_tp_group()
        gathered: list[Any] = [None] * group.world_size
        torch_dist.all_gather_object(gathered, (prompts, seeds), group=group.cpu_group)
        start = sum(len(p) for p, _ in gathered[: group.rank_in_group])
        pooled = [p for ps, _ in gathered for p in ps]
        pooled_seeds = None if any(s is None for _, s in gathered) else [s for _, ss in gathered for s in ss]
        return pooled, pooled_seeds, slice(start, start + len(prompts))

    # ------------------------------------------------------------------------------------------
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Stream the trainer's (name, full tensor) pairs into the engine, one bucket at a time.

        The iterator is always consumed to the end: under FSDP each item is a collective that every
        rank must join.
        """
        if self._asleep and not self._weights_awake:
            self.llm.wake_up(tags=["weights"])  # never write into offloaded (slept) weight memory
            self._weights_awake = True
        rpc = self.llm.collective_rpc
        rpc("npu_rl_begin_weight_sync")
        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0
        for name, tensor in named_tensors:
            bucket.append((name, tensor.detach()))
            size += tensor.numel() * tensor.element_size()
            if size >= self.bucket_bytes:
                rpc("npu_rl_load_weight_bucket", args=(self._wire(bucket),))
                bucket, size = [], 0
        if bucket:
            rpc("npu_rl_load_weight_bucket", args=(self._wire(bucket),))
        missing = {name for worker in rpc("npu_rl_finish_weight_sync") for name in worker}
        self.llm.reset_prefix_cache()
        if missing:
            raise RuntimeError(
                f"weight sync left {len(missing)} vLLM parameters without a tensor (first: {sorted(missing)[:5]}); "
                "the trainer's state dict does not match the served model"
            )

    def _wire(self, bucket: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]] | bytes:
        """In-process the bucket is handed over by reference. Out of process it is packed into one
        safetensors blob: vLLM relays RPC arguments engine -> worker with pickle, which cannot carry the
        zero-copy tensors its own first hop decodes into."""
        if self.in_process:
            return bucket
        from safetensors.torch import save

        return save({name: t.to("cpu").contiguous().clone() for name, t in bucket})  # clone: tied weights share storage

    def close(self) -> None:
        """Shut the engine down. In-process (under torchrun) vLLM's shutdown also destroys the default
        torch.distributed group, so this must be the trainer's last collective step."""
        self.llm.llm_engine.engine_core.shutdown()

    def sleep(self) -> None:
        """Level-1 sleep: weights to host memory, KV cache freed, while the trainer holds the card."""
        if self.sleep_enabled and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep, self._weights_awake = True, False

    def wake_up(self) -> None:
        """Bring back whatever `sleep` released (only the KV cache if a weight sync already woke the weights)."""
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"] if self._weights_awake else None)
            self._asleep, self._weights_awake = False, False


# ----------------------------------------------------------------------------------------------
def check_engine_memory(utilization: float, acc: Accelerator) -> None:
    """vLLM and vllm-ascend refuse to start unless `utilization` x the device's memory is free; they say
    so from inside their worker, after loading, in a traceback. The same check before the engine starts
    names the key and the largest value that fits beside what the trainer already placed on the device
    (its models; optimizer states come at the first update, while a sleeping engine has let go)."""
    memory = acc.memory_free_total()
    if memory is None or memory[0] >= utilization * memory[1]:
        return
    free, total = memory
    gib = 1024**3
    raise ConfigError(
        f"rollout.gpu_memory_utilization={utilization} asks vLLM for {utilization * total / gib:.1f} GiB of "
        f"this {total / gib:.1f} GiB device, but {free / gib:.1f} GiB are free beside the trainer's models: "
        f"set it to at most {math.floor(free / total * 100) / 100:.2f}, or leave vLLM more room "
        "(actor.fsdp.param_offload=true, ref.param_offload=true, LoRA, a smaller model)"
    )


def check_fp32_head_support() -> None:
    """Refuse a vLLM whose LogitsProcessor does not read `head_dtype`: older versions accept the override
    and keep computing generation logits in the model dtype, so only the trainer's head would be fp32."""
    from vllm.model_executor.layers.logits_processor import LogitsProcessor

    if "head_dtype" not in LogitsProcessor.__init__.__code__.co_names:
        import vllm

        raise ConfigError(
            f"model.fp32_lm_head: vLLM {vllm.__version__} computes generation logits in the model dtype "
            "(head_dtype for generation models came with vLLM PR #48390); upgrade vLLM or set "
            "model.fp32_lm_head=false"
        )


def _optional_engine_args(cfg: RolloutConfig) -> dict[str, Any]:
    """The engine knobs whose null means "vLLM's own default": passed only when set."""
    knobs = {"enable_chunked_prefill": cfg.enable_chunked_prefill, "max_num_batched_tokens": cfg.max_num_batched_tokens}
    return {name: value for name, value in knobs.items() if value is not None}


def _generation_config(model_path: str) -> Any:
    """The model folder's generation config (for its extra EOS ids), or None when it has none."""
    if not (Path(model_path) / "generation_config.json").is_file():
        return None
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(model_path)


def _tokenizer_path(model_path: str, tokenizer: Any) -> str:
    """Where vLLM loads its tokenizer from. It only checks token ids and EOS here (prompts arrive as
    ids, outputs are not detokenized); a model folder's own tokenizer avoids vLLM probing a
    tokenizer-only folder for a model config."""
    if any((Path(model_path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return model_path
    return getattr(tokenizer, "name_or_path", None) or model_path


def _spread(seed: int) -> int:
    """Scramble a prompt seed: vLLM seeds sample j of a request with `seed + j`, so nearby prompt seeds
    (s and s + 1) would otherwise share sample streams."""
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0] >> 1)


def _cpu_kv_cache_bytes(model_path: str, dtype: torch.dtype, max_num_seqs: int, max_model_len: int | None) -> int:
    """KV cache for `max_num_seqs` full-length sequences, capped (on the CPU the default would claim
    gpu_memory_utilization x host RAM), and never below one full-length sequence."""
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(model_path)
    text = getattr(hf, "text_config", None) or hf
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8
    seq_len = max_model_len or text.max_position_embeddings
    return max(per_token * seq_len, min(per_token * seq_len * max_num_seqs, CPU_KV_CACHE_CAP_BYTES))


def _pack(rows: list[tuple[list[int], list[float], str]], pad_token_id: int, n: int) -> RolloutOutput:
    """Right-pad per-sample token ids and logprobs into the interface's tensors (n rows per prompt)."""
    width = max((len(ids) for ids, _, _ in rows), default=0)
    response_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    logprobs = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (ids, logps, _) in enumerate(rows):
        response_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        logprobs[i, : len(ids)] = torch.tensor(logps, dtype=torch.float32)
    group, sample = grouped(n, len(rows) // n)
    return RolloutOutput(
        response_ids=response_ids,
        logprobs=logprobs,
        lengths=torch.tensor([len(ids) for ids, _, _ in rows], dtype=torch.long),
        finish_reasons=[reason for _, _, reason in rows],
        group=group,
        sample=sample,
    )
