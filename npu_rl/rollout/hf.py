"""Transformers rollout backend: batched sampling with a KV cache, colocated with the trainer.

It generates with the trainer's own module, so there is nothing to sync between steps. What
makes it faster than `model.generate` for GRPO: each prompt is prefilled once and its KV cache is
shared by its n samples; finished sequences are dropped from the decode batch so the tail of a
long response does not pay for the short ones; with `rollout.decoder=fast` (npu_rl.compute picks
it for Llama-family models) decode steps run through `fast_decode.FastDecoder` (fused weights,
pre-allocated cache, the plan's oneDNN matmuls on the CPU); and a model small enough for its
decode steps to be synchronisation-bound decodes on one CPU thread. The plain decoder (the
transformers forward on a DynamicCache) is the reference the fast path is tested against.
Under FSDP the rollout holds the policy's full weights from `wake_up` to `sleep`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from transformers import DynamicCache

from npu_rl import distributed
from npu_rl.compute import ComputePlan
from npu_rl.rollout.base import RolloutOutput, SamplingParams, grouped
from npu_rl.rollout.fast_decode import FastDecoder
from npu_rl.rollout.kv_budget import DecodeShape, prompts_per_call
from npu_rl.storage import fmt_bytes


def sample_next(
    logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor, seen: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row by inverse-CDF with the given uniforms; return it and its logprob.

    Taking the uniforms as input (one per row) makes a row's sample depend only on its own seed,
    not on which other prompts share the batch or the rank: the same seeds give the same rollouts
    on one process or many, and after a resume.
    The processors run in vLLM's order: repetition penalty on the raw logits of the tokens in `seen`
    (a [rows, vocab] mask of the prompt's and the response's tokens; positive logits divided by the
    penalty, negative ones multiplied), temperature, min_p (tokens below min_p x the most likely
    token's probability dropped), then top-k and top-p. The logprob ignores all of them on purpose:
    it is the quantity the trainer recomputes (log_softmax of logits / T), so the two can be compared
    directly.
    """
    logits = logits.float()
    penalized = logits
    if params.repetition_penalty != 1.0 and seen is not None:
        scaled_down = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
        penalized = torch.where(seen, scaled_down, logits)
    if params.temperature <= 0:
        tokens = penalized.argmax(dim=-1)
        return tokens, torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    scaled = logits / params.temperature if params.temperature != 1.0 else logits
    logprobs = torch.log_softmax(scaled, dim=-1)
    filtered = scaled if penalized is logits else penalized / params.temperature
    if params.min_p > 0:
        probs = torch.softmax(filtered, dim=-1)
        floor = params.min_p * probs.amax(dim=-1, keepdim=True)
        filtered = filtered.masked_fill(probs < floor, float("-inf"))
    if 0 < params.top_k < filtered.shape[-1]:
        kth = torch.topk(filtered, params.top_k, dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(filtered, descending=True, dim=-1)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= params.top_p  # keeps the token crossing top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        filtered = filtered.masked_fill(drop, float("-inf"))
    probs = logprobs.exp() if filtered is scaled else torch.softmax(filtered, dim=-1)
    cdf = probs.cumsum(dim=-1)
    target = (uniforms * cdf[:, -1]).unsqueeze(-1)
    tokens = torch.searchsorted(cdf, target).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


class HFRollout:
    """Generates with a Hugging Face causal LM (any module with the `generate`-style forward)."""

    def __init__(
        self,
        model: nn.Module,
        eos_token_ids: Iterable[int],
        pad_token_id: int,
        plan: ComputePlan,
        micro_batch_size: int = 64,
        free_memory: Callable[[], tuple[int, int] | None] | None = None,
    ) -> None:
        """`free_memory`: (free, total) bytes of the device, or None where unknown (the CPU); with it each
        call takes at most as many prompts as fit (npu_rl.rollout.kv_budget), else `micro_batch_size`."""
        self.model = model
        self.plan = plan
        self.eos_token_ids = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long)
        self.pad_token_id = pad_token_id
        self.micro_batch_size = micro_batch_size
        self.free_memory = free_memory
        self._told: int | None = None  # the lowered prompts-per-call last reported
        self._awake: contextlib.ExitStack | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Nothing to do: this backend samples from the trainer's live module."""

    def wake_up(self) -> None:
        """Hold the policy's full weights (a no-op unless FSDP-sharded): decode steps then need no
        collectives, so ranks whose responses end at different steps cannot deadlock."""
        if self._awake is None:
            stack = contextlib.ExitStack()
            stack.enter_context(distributed.gathered_params(self.model))
            self._awake = stack

    def sleep(self) -> None:
        """Give the gathered weights back (the KV cache lives only inside `generate`)."""
        if self._awake is not None:
            self._awake, stack = None, self._awake
            stack.close()

    def close(self) -> None:
        self.sleep()

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> RolloutOutput:
        uniforms = _uniforms(len(prompts), params, seeds)
        size = self._prompts_per_call(prompts, params)
        was_training = self.model.training
        self.model.eval()
        try:
            chunks = [
                self._generate_chunk(prompts[i : i + size], params, uniforms[i * params.n : (i + size) * params.n])
                for i in range(0, len(prompts), size)
            ]
        finally:
            self.model.train(was_training)
        width = max(c.response_ids.shape[1] for c in chunks)
        group, sample = grouped(params.n, len(prompts))
        return RolloutOutput(
            response_ids=torch.cat([_pad_to(c.response_ids, width, self.pad_token_id) for c in chunks]),
            logprobs=torch.cat([_pad_to(c.logprobs, width, 0.0) for c in chunks]),
            lengths=torch.cat([c.lengths for c in chunks]),
            finish_reasons=[r for c in chunks for r in c.finish_reasons],
            group=group,
            sample=sample,
        )

    def _prompts_per_call(self, prompts: list[list[int]], params: SamplingParams) -> int:
        """`micro_batch_size`, or fewer where the device's free memory cannot hold that many prompts'
        samples at once (said once per new value); the grouping does not change the samples."""
        memory = self.free_memory() if self.free_memory is not None and prompts else None
        if memory is None:
            return self.micro_batch_size
        width = max(len(p) for p in prompts)
        shape = DecodeShape.of(self.model)
        per_prompt = shape.bytes_per_prompt(params, width, self.plan.decoder == "fast")
        size = prompts_per_call(self.micro_batch_size, per_prompt, memory[0])
        if size < self.micro_batch_size and size != self._told:
            self._told = size
            print(
                f"[npu_rl] hf rollout: {size} prompts per generate call instead of rollout.micro_batch_size="
                f"{self.micro_batch_size}: {params.n} samples x {width + params.max_new_tokens} tokens need about "
                f"{fmt_bytes(per_prompt)} per prompt and {fmt_bytes(memory[0])} are free"
            )
        return size

    def _generate_chunk(
        self, prompts: list[list[int]], params: SamplingParams, uniforms: torch.Tensor
    ) -> RolloutOutput:
        device = self.device
        uniforms = uniforms.to(device)
        n, batch = params.n, len(prompts)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((batch, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends at the same column
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[row, width - len(prompt) :] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)

        with self.plan.linears.around():
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                past_key_values=DynamicCache(),
                use_cache=True,
                logits_to_keep=1,
            )
        # One prefill per prompt; its cache is shared by the prompt's n samples (prompt-major rows).
        last_logits = out.logits[:, -1].repeat_interleave(n, dim=0)
        steps = positions[:, -1:] + 1 + torch.arange(params.max_new_tokens, device=device)  # rotary positions
        decoder = _Decoder(self.model, out.past_key_values, attention, steps, n, params.max_new_tokens, self.plan)
        del out  # the prefill's cache lives on only as the decoder's (the fast one copied it into its buffers)

        total = batch * n
        tokens_out = torch.full((total, params.max_new_tokens), self.pad_token_id, dtype=torch.long, device=device)
        logprobs_out = torch.zeros((total, params.max_new_tokens), dtype=torch.float32, device=device)
        lengths = torch.full((total,), params.max_new_tokens, dtype=torch.long, device=device)
        finished = torch.zeros(total, dtype=torch.bool, device=device)

        seen = None
        if params.repetition_penalty != 1.0:  # the tokens each row's penalty applies to: its prompt's, then its own
            counts = torch.zeros((batch, last_logits.shape[-1]), dtype=torch.long, device=device)
            seen = counts.scatter_add_(1, input_ids, attention).gt(0).repeat_interleave(n, dim=0)  # pads add 0
        with decode_threads(self.model, total):
            self._decode(decoder, last_logits, params, uniforms, tokens_out, logprobs_out, lengths, finished, seen)

        width = int(lengths.max())
        group, sample = grouped(n, batch)
        return RolloutOutput(
            response_ids=tokens_out[:, :width].cpu(),
            logprobs=logprobs_out[:, :width].cpu(),
            lengths=lengths.cpu(),
            finish_reasons=["stop" if f else "length" for f in finished.tolist()],
            group=group,
            sample=sample,
        )

    def _decode(
        self,
        decoder: _Decoder,
        last_logits: torch.Tensor,
        params: SamplingParams,
        uniforms: torch.Tensor,
        tokens_out: torch.Tensor,
        logprobs_out: torch.Tensor,
        lengths: torch.Tensor,
        finished: torch.Tensor,
        seen: torch.Tensor | None,
    ) -> None:
        """Sample token by token into the output tensors; finished rows leave the decode batch (and
        `seen`, the repetition penalty's token mask of the rows still decoding)."""
        eos = self.eos_token_ids.to(tokens_out.device)
        active = torch.arange(len(tokens_out), device=tokens_out.device)  # output rows still decoding
        every = slice(None)  # `active` while no row has finished: plain slices, no index tensors
        for step in range(params.max_new_tokens):
            rows = every if every is not None else active
            token, logprob = sample_next(last_logits, params, uniforms[rows, step], seen)
            if seen is not None:
                seen[torch.arange(len(token), device=token.device), token] = True
            tokens_out[rows, step] = token
            logprobs_out[rows, step] = logprob
            done = torch.isin(token, eos)
            if done.any():
                every = None
                lengths[active[done]] = step + 1
                finished[active[done]] = True
                if bool(done.all()):
                    break
                keep = (~done).nonzero().squeeze(-1)  # drop finished rows from the decode batch
                decoder.select(keep)
                active, token = active[keep], token[keep]
                seen = seen[keep] if seen is not None else None
            if step + 1 == params.max_new_tokens:
                break
            last_logits = decoder.step(token, step)


# Below this many FLOPs per decode step a CPU decodes faster on one thread: each small matmul split
# over threads costs more in synchronisation than it saves (far more on a shared, busy CPU).
SINGLE_THREAD_DECODE_FLOPS = 1e8


@contextlib.contextmanager
def decode_threads(model: nn.Module, rows: int) -> Iterator[None]:
    """One torch thread while decoding a model so small that its steps are synchronisation-bound.

    Deterministic (a function of the model and batch), so the same seeds still give the same samples.
    """
    threads = torch.get_num_threads()
    small = 2 * rows * sum(p.numel() for p in model.parameters()) < SINGLE_THREAD_DECODE_FLOPS
    if next(model.parameters()).device.type != "cpu" or threads == 1 or not small:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Decoder:
    """Decode steps after the prefill: `FastDecoder` with the fast plan, else the transformers
    forward on a `DynamicCache` (the reference the fast path is tested against)."""

    def __init__(
        self,
        model: nn.Module,
        cache: DynamicCache,
        prompt_mask: torch.Tensor,
        positions: torch.Tensor,
        n: int,
        max_new: int,
        plan: ComputePlan,
    ) -> None:
        self.model = model
        self.linears = plan.linears  # the transformers decoder still gets the plan's matmuls
        self.positions = positions.repeat_interleave(n, dim=0)
        self.fast = FastDecoder(model, len(self.positions), plan.linears) if plan.decoder == "fast" else None
        if self.fast is not None:
            self.fast.start(cache, n, prompt_mask, self.positions, max_new)
            return
        if n > 1:
            cache.batch_repeat_interleave(n)
        self.cache = cache
        self.attention = prompt_mask.repeat_interleave(n, dim=0)

    def select(self, keep: torch.Tensor) -> None:
        self.positions = self.positions[keep]
        if self.fast is not None:
            self.fast.select(keep)
        else:
            self.cache.batch_select_indices(keep)
            self.attention = self.attention[keep]

    def step(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Logits of the next token after feeding `tokens` (decode step `step`)."""
        if self.fast is not None:
            return self.fast.step(tokens, step)
        self.attention = torch.cat([self.attention, self.attention.new_ones((self.attention.shape[0], 1))], dim=1)
        with self.linears.around():
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=self.attention,
                position_ids=self.positions[:, step : step + 1],
                past_key_values=self.cache,
                use_cache=True,
            )
        return out.logits[:, -1]


def _uniforms(num_prompts: int, params: SamplingParams, seeds: list[int] | None) -> torch.Tensor:
    """[num_prompts * n, max_new_tokens] uniforms, prompt-major; from each prompt's seed when given."""
    if seeds is None:
        return torch.rand(num_prompts * params.n, params.max_new_tokens)
    if len(seeds) != num_prompts:
        raise ValueError(f"got {len(seeds)} seeds for {num_prompts} prompts")
    gen = torch.Generator()
    return torch.cat([torch.rand(params.n, params.max_new_tokens, generator=gen.manual_seed(s)) for s in seeds])


def _pad_to(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)
