"""Long-tail GRPO passes: padded vs packed vs packed + token-budget micro-batches.

    python bench/long_tail.py                       # small model, 4 prompts x 8 samples, up to 256 tokens
    python bench/long_tail.py --size tiny --max-new-tokens 64 --repeats 1   # seconds (the CI smoke run)
    python bench/long_tail.py --memory              # peak RSS of one training step per variant
    python bench/long_tail.py --uniform --prompts 2 --max-new-tokens 64   # no padding: packing's cost
    python bench/long_tail.py --checkpointing [--memory]   # gradient checkpointing: plain vs packed
    python bench/long_tail.py --critic              # PPO's critic: values pass + update, padded vs packed
    python bench/long_tail.py --vocab 32000 --head-chunk 512 [--memory]   # the chunked head vs the whole

The workload is what GRPO on math looks like: most responses stop early (30 to ~120 tokens) and
a tail runs to the length limit. The rollout batch is synthetic (seeded prompt and response
lengths, random token ids) so every variant sees exactly the same rows; generation and reward are
not part of what changes here. Per variant, one "step" is the passes this issue changes: an
old-policy logprob pass, a reference logprob pass and one training update (forward, backward,
AdamW) over the whole batch as one mini-batch. Variants run interleaved, `--repeats` times,
medians reported:

- padded: `actor.forward=fused` (the previous default: each prompt once, rows padded to the
  micro-batch's longest prompt and response), 8 rows per micro-batch;
- packed: `actor.forward=packed` (only real tokens), 8 rows per micro-batch;
- packed+budget: packed with `actor.use_dynamic_bsz` and a budget of 8 x the mean row length.

With `--checkpointing` the variants are those of `model.gradient_checkpointing=true` (verl's
Ascend sample sets it): plain+ckpt (transformers' checkpointed forward over padded rows, what `auto`
chose under checkpointing before the fused layers could recompute themselves), packed+ckpt (now)
and packed without checkpointing (what checkpointing costs and saves).

With `--head-chunk N` the variants are packed and packed+chunk (`actor.head_chunk_tokens=N`: the
head's log-probs N tokens at a time, recomputed in backward); `--vocab` sets the vocabulary (the
logits it saves scale with it: Qwen2.5's is 151936).

With `--critic` the same variants run the critic's share of a PPO step instead (npu_rl.critic: a
values pass and one critic update, a value model of the same size with a non-zero head); its
padded variant is one forward over padded rows (the critic has no shared-prompt pass).

"wasted" is the fraction of token slots that the token-wise work (projections, MLP, head) spends
on padding: prompt columns G x P plus response columns N x T per micro-batch, against the real
tokens. The packed pass has none; its attention still pads per segment on the CPU (varlen kernels
on accelerators do not). Timings need a quiet machine: the script prints the CPU model.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _assets import BENCH_SIZES  # noqa: E402
from _machine import cpu_model  # noqa: E402

from npu_rl import actor, critic, optim  # noqa: E402
from npu_rl.compute import build_plan  # noqa: E402
from npu_rl.config import ActorConfig, CriticConfig  # noqa: E402
from npu_rl.device import Accelerator  # noqa: E402
from npu_rl.metrics import StepStats  # noqa: E402

VARIANTS = ("padded", "packed", "packed+budget")
CHECKPOINT_VARIANTS = ("plain+ckpt", "packed+ckpt", "packed")
HEAD_CHUNK_VARIANTS = ("packed", "packed+chunk")
MICRO = 8


def build_model(size: str, vocab: int = 1000) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=True, **BENCH_SIZES[size])
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def long_tail_batch(prompts: int, n: int, max_new: int, seed: int = 0, uniform: bool = False) -> actor.PolicyBatch:
    """A seeded batch: prompts of 20-60 tokens; 70 % of responses 30-120 tokens, 30 % from half the
    limit to the limit (short responses clipped to the limit when it is small); `uniform`: every
    response at the limit (no padding to remove: what packing costs where it cannot help)."""
    from npu_rl.data import PromptRecord
    from npu_rl.rollout import RolloutBatch, RolloutOutput
    from npu_rl.rollout.base import grouped

    gen = torch.Generator().manual_seed(seed)
    plens = torch.randint(20, 61, (prompts,), generator=gen).tolist()
    records = [
        PromptRecord(i, torch.randint(3, 1000, (p,), generator=gen).tolist(), "", [], "s", "0", "m", {}, "x", i)
        for i, p in enumerate(plens)
    ]
    rows = prompts * n
    short = torch.randint(30, 121, (rows,), generator=gen)
    long = torch.randint(max_new // 2, max_new + 1, (rows,), generator=gen)
    lengths = torch.where(torch.rand(rows, generator=gen) < 0.7, short, long).clamp(1, max_new)
    if uniform:
        lengths = torch.full((rows,), max_new)
    responses = torch.randint(3, 1000, (rows, max_new), generator=gen)
    responses[torch.arange(max_new)[None, :] >= lengths[:, None]] = 0
    group, sample = grouped(n, prompts)
    out = RolloutOutput(responses, torch.zeros(responses.shape), lengths, ["stop"] * rows, group, sample)
    batch = actor.build_policy_batch(RolloutBatch.bind(records, out), 0)
    batch.advantages = torch.randn(rows, 1, generator=gen) * batch.response_mask
    return batch


def wasted_fraction(batch: actor.PolicyBatch, micro_rows: list[torch.Tensor], forward: str) -> float:
    """Padding share of the token slots of the token-wise work (see the module docstring); the
    plain forward also runs every row's prompt, counted as waste beyond the first of its group."""
    if forward == "packed":
        return 0.0
    real = slots = 0
    width = batch.response_width
    for rows in micro_rows:
        part = batch.select(rows)
        groups = torch.unique(part.group)
        prompt_cols = part.attention_mask[:, :-width]
        used = int(part.response_mask.sum(-1).max())
        lens = prompt_cols.sum(-1)
        first = {int(g): int(lens[(part.group == g).nonzero()[0]]) for g in groups}
        real += sum(first.values()) + int(part.response_mask.sum())
        prompt_rows = len(part) if forward == "plain" else len(groups)
        slots += prompt_rows * int(lens.max()) + len(part) * used
    return 1 - real / slots


def variants_of(args: argparse.Namespace, memory: bool = False) -> tuple[str, ...]:
    if args.checkpointing:
        return CHECKPOINT_VARIANTS
    if args.head_chunk:
        return HEAD_CHUNK_VARIANTS
    return ("full", "lora") if memory else VARIANTS


def variant_setup(name: str, model: torch.nn.Module, batch: actor.PolicyBatch, head_chunk: int = 0):
    cfg = ActorConfig()
    cfg.ppo_micro_batch_size_per_device = MICRO
    padded = "plain" if isinstance(model, critic.ValueModel) else "fused"
    cfg.forward = {"padded": padded, "plain+ckpt": "plain"}.get(name, "packed")
    if name == "packed+budget":
        cfg.use_dynamic_bsz = True
        mean_row = float(batch.attention_mask.sum()) / len(batch)
        cfg.ppo_max_token_len_per_device = max(int(MICRO * mean_row), int(batch.attention_mask.sum(-1).max()))
    chunk = head_chunk if name == "packed+chunk" else 0
    plan = build_plan(model, Accelerator("cpu"), cfg.forward, "auto", name.endswith("+ckpt"), chunk)
    budget = cfg.ppo_max_token_len_per_device if cfg.use_dynamic_bsz else None
    return cfg, plan, budget


def hf_checkpointing(model: torch.nn.Module, name: str) -> None:
    """transformers' own gradient checkpointing on for the plain+ckpt variant, off otherwise (the
    fused layers checkpoint through their plan); a critic's is its decoder's."""
    model = model.model if isinstance(model, critic.ValueModel) else model
    if name == "plain+ckpt":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def one_step(model, optimizer, batch, cfg, plan, budget) -> tuple[float, float]:
    """(seconds of the two no-grad logprob passes, seconds of the training update)."""
    start = time.perf_counter()
    for _ in range(2):  # old policy and reference (the same weights here; the same work)
        actor.compute_logprobs(model, batch, 1.0, MICRO, plan, max_tokens=budget)
    mid = time.perf_counter()
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    groups = len(torch.unique(batch.group))
    actor.update_policy(model, optimizer, sched, batch, cfg, 1.0, plan, groups, batch.response_width, StepStats())
    return mid - start, time.perf_counter() - mid


def critic_step(model, optimizer, batch, cfg, plan, budget) -> tuple[float, float]:
    """(seconds of the critic's values pass, seconds of its update): the critic's share of a PPO step."""
    cpu = torch.device("cpu")
    start = time.perf_counter()
    batch.values = critic.compute_values(model, batch, MICRO, cpu, plan, budget)
    mid = time.perf_counter()
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    groups, width = len(torch.unique(batch.group)), batch.response_width
    critic_cfg = CriticConfig(ppo_micro_batch_size_per_device=MICRO)
    critic.update_critic(model, optimizer, sched, batch, critic_cfg, 1, groups, width, StepStats(), cpu, plan, budget)
    return mid - start, time.perf_counter() - mid


def value_model(size: str) -> critic.ValueModel:
    """The bench model as a critic, its head drawn at random (as a trained critic's, not zero)."""
    model = critic.ValueModel(build_model(size))
    torch.nn.init.normal_(model.value_head.weight, std=0.02)
    return model


def run_speed(args: argparse.Namespace) -> None:
    model = value_model(args.size) if args.critic else build_model(args.size, args.vocab)
    step_fn = critic_step if args.critic else one_step
    batch = long_tail_batch(args.prompts, args.n, args.max_new_tokens, uniform=args.uniform)
    batch.returns = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(1))
    batch.returns *= batch.response_mask
    tokens = int(batch.attention_mask.sum())
    lengths = batch.response_mask.sum(-1)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model {args.size}: {params:.1f} M params; batch {args.prompts} prompts x {args.n}, responses "
          f"{int(lengths.min())}-{int(lengths.max())} tokens (median {int(lengths.median())}), {tokens} real "
          f"tokens; torch threads {torch.get_num_threads()}")  # fmt: skip
    variants = variants_of(args)
    setups = {name: variant_setup(name, model, batch, args.head_chunk) for name in variants}
    optimizer = optim.build_optimizer(model, setups[variants[0]][0].optim)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name in variants if repeat % 2 == 0 else reversed(variants):
            cfg, plan, budget = setups[name]
            hf_checkpointing(model, name)
            result = step_fn(model, optimizer, batch, cfg, plan, budget)
            if repeat:
                times[name].append(result)
    passes = "values s" if args.critic else "logprob s"
    print(f"{'variant':>14} {'micro':>5} {'wasted':>7} {passes:>10} {'update s':>9} {'step s':>7} "
          f"{'train tok/s':>11} {'step vs first':>14}")  # fmt: skip
    base = None
    for name in variants:
        cfg, plan, budget = setups[name]
        micro_rows = actor.micro_batch_rows(batch, MICRO, budget)
        logprob = statistics.median(t[0] for t in times[name])
        update = statistics.median(t[1] for t in times[name])
        step = logprob + update
        base = base or step
        waste = wasted_fraction(batch, micro_rows, plan.forward)
        print(f"{name:>14} {len(micro_rows):>5} {waste:>7.1%} {logprob:>10.3f} {update:>9.3f} {step:>7.3f} "
              f"{tokens / update:>11.0f} {step / base:>14.2f}")  # fmt: skip


def memory_child(args: argparse.Namespace) -> None:
    """One training step in this fresh process; prints peak RSS (MiB) after loading and after the step,
    and the largest total autograd kept for backward in one micro-batch of the update (MiB: exact,
    unlike RSS, which also holds the optimizer state and what the allocator keeps)."""
    model = build_model(args.size, args.vocab)
    batch = long_tail_batch(args.prompts, args.n, args.max_new_tokens)
    if args.memory_child == "lora":
        from npu_rl import lora

        model = lora.wrap(model, rank=16, alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    cfg = ActorConfig()
    cfg.ppo_micro_batch_size_per_device = MICRO
    if args.memory_child in CHECKPOINT_VARIANTS + HEAD_CHUNK_VARIANTS:
        hf_checkpointing(model, args.memory_child)
        cfg, plan, _ = variant_setup(args.memory_child, model, batch, args.head_chunk)
    else:
        plan = build_plan(model, Accelerator("cpu"))  # auto: packed
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    saved = [0]  # bytes kept for backward by the micro-batch running now; the largest seen
    largest = [0]

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        largest[0] = max(largest[0], saved[0])
        return t

    def backward_done(*_: object) -> None:
        saved[0] = 0

    torch.autograd.graph.register_multi_grad_hook(list(model.parameters())[:1], backward_done, mode="any")
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        one_step(model, optim.build_optimizer(model, cfg.optim), batch, cfg, plan, None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{plan.forward} {loaded:.0f} {peak:.0f} {largest[0] / 2**20:.0f}")


def run_memory(args: argparse.Namespace) -> None:
    print(f"peak RSS of one step (2 logprob passes + update), model {args.size} (vocabulary {args.vocab}), "
          f"{args.prompts} x {args.n} rows")  # fmt: skip
    print(f"{'variant':>12} {'forward':>13} {'after load MiB':>14} {'peak MiB':>9} {'step adds MiB':>13} "
          f"{'saved for backward MiB':>22}")  # fmt: skip
    for variant in variants_of(args, memory=True):
        cmd = [sys.executable, __file__, "--memory-child", variant, "--size", args.size, "--prompts",
               str(args.prompts), "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens),
               "--vocab", str(args.vocab), "--head-chunk", str(args.head_chunk)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{variant:>12} failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        forward, loaded, peak, saved = proc.stdout.split()[-4:]
        added = float(peak) - float(loaded)
        print(f"{variant:>12} {forward:>13} {float(loaded):>14.0f} {float(peak):>9.0f} {added:>13.0f} {saved:>22}")
    if variants_of(args, memory=True) == ("full", "lora"):
        print("optimizer offload moves AdamW state off an accelerator; on the CPU there is nothing to move")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(BENCH_SIZES), default="small")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--uniform", action="store_true", help="every response at the limit (packing's overhead)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the process's cores)")
    parser.add_argument("--memory", action="store_true", help="peak RSS per variant instead of speed")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing: plain vs packed")
    parser.add_argument("--critic", action="store_true", help="the critic's passes instead of the actor's")
    parser.add_argument("--head-chunk", type=int, default=0, help="compare packed with the head chunked by this")
    parser.add_argument("--vocab", type=int, default=1000, help="vocabulary of the bench model")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from npu_rl.device import cpu_threads

    torch.set_num_threads(cpu_threads(args.threads))
    if args.memory_child:
        memory_child(args)
        return
    print(f"CPU: {cpu_model()}")
    run_memory(args) if args.memory else run_speed(args)


if __name__ == "__main__":
    main()
