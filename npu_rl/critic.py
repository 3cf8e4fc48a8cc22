"""The critic for PPO with GAE: the policy's architecture with a scalar value head.

`ValueModel` keeps the causal LM's decoder (as `.model`, so FSDP2 finds its blocks like the actor's)
and replaces the LM head with a Linear(hidden, 1) initialised to zero, so every value starts at 0
and the first updates fit the returns instead of fighting a random head. V at response token t is
read at the position before it (the state the token was chosen in), as verl does.

The values and training passes take the actor's machinery: for Llama-family decoders the packed,
padding-free pass of npu_rl.packing with the value head in place of the LM head (the packed layout's
predicting tokens are exactly those states), gradient checkpointing through the plan, and
micro-batches in rows or, with `critic.use_dynamic_bsz`, by tokens (actor.micro_batch_rows).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from npu_rl import core_algos, distributed, optim, packing
from npu_rl.actor import PolicyBatch, clipped_step, micro_batch_rows
from npu_rl.algos.policy_losses import value_loss
from npu_rl.compute import ComputePlan, build_plan
from npu_rl.config import Config, CriticConfig
from npu_rl.device import Accelerator
from npu_rl.metrics import StepStats
from npu_rl.model import load_model


class ValueModel(nn.Module):
    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        # the decoder stack; transformers 4.56's get_decoder() returns None for Qwen2 (its `.model`)
        self.model = lm.get_decoder() or lm.model
        self.config = lm.config
        self._no_split_modules = getattr(lm, "_no_split_modules", None)
        weight = next(self.model.parameters())
        self.value_head = nn.Linear(lm.config.hidden_size, 1, dtype=weight.dtype, device=weight.device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return self.value_head(hidden).squeeze(-1).float()


def _response_values(critic: nn.Module, micro: PolicyBatch, plan: ComputePlan) -> torch.Tensor:
    """[n, T] values of the states before each response token (0 on mask-0 tokens): packed when the
    plan is (and every row has a prompt token), else one forward over the padded rows."""
    width, mask = micro.response_width, micro.response_mask
    if plan.forward == "packed":
        layout = packing.build_layout(micro.input_ids, micro.attention_mask, micro.position_ids, mask, micro.group)
        if layout is not None:
            linear, value_head = plan.linears.linear, critic.value_head
            values = packing.packed_logits(
                critic, layout, plan.attention, linear, plan.checkpoint, value_head, offload=plan.offload
            )
            return packing.scatter_rows(values.squeeze(-1).float(), layout, (len(micro), width)) * mask
    out = critic(micro.input_ids, micro.attention_mask, micro.position_ids)
    return out[:, -width - 1 : -1] * mask


@torch.no_grad()
def compute_values(
    critic: nn.Module,
    batch: PolicyBatch,
    micro_batch: int,
    device: torch.device,
    plan: ComputePlan,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """[N, T] values of the states before each response token (0 on mask-0 tokens), in micro-batches
    of `micro_batch` rows or about `max_tokens` tokens (a collective under torchrun)."""
    critic.eval()
    values = torch.zeros(batch.response_mask.shape)
    for rows in micro_batch_rows(batch, micro_batch, max_tokens):
        values[rows] = _response_values(critic, batch.select(rows).to(device), plan).cpu()
    return values


def update_critic(
    critic: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: PolicyBatch,
    cfg: CriticConfig,
    ppo_epochs: int,
    mini_batch_groups: int,
    horizon: int,
    stats: StepStats,
    device: torch.device,
    plan: ComputePlan,
    max_tokens: int | None = None,
    world_size: int = 1,
) -> None:
    """Clipped value regression onto `batch.returns` around `batch.values` (the values at rollout),
    over the actor's mini-batches of whole groups, with the critic's own micro-batches (rows, or
    about `max_tokens` tokens); the loss is normalised by mini-batch totals over all ranks as the
    actor's is, so the gradient does not depend on the split. Logs critic/{vf_loss, vf_clipfrac,
    vpred_mean, grad_norm, lr} (averaged over updates)."""
    critic.train()
    sums: dict[str, float] = defaultdict(float)
    norms: list[float] = []
    for _ in range(ppo_epochs):
        for mini in batch.split_groups(mini_batch_groups):
            seqs = float(core_algos.count_sequences(mini.response_mask))
            totals = distributed.all_reduce(torch.tensor([mini.response_mask.sum().item(), seqs]), "sum")
            optimizer.zero_grad(set_to_none=True)
            for rows in micro_batch_rows(mini, cfg.ppo_micro_batch_size_per_device, max_tokens):
                micro = mini.select(rows).to(device)
                mask = micro.response_mask
                vpreds = _response_values(critic, micro, plan)
                mat, vf_stats = value_loss(vpreds, micro.values, micro.returns, mask, cfg.cliprange_value)
                loss = core_algos.aggregate_loss(mat, mask, cfg.loss_agg_mode, totals[0], totals[1], horizon)
                (loss * world_size).backward()  # gradients are averaged over ranks; the loss is a global mean
                share = mask.sum().item() / max(1.0, float(totals[0]))
                sums["critic/vf_loss"] += loss.item()
                for key, value in vf_stats.items():
                    sums[f"critic/{key}"] += value.item() * share
            norms.append(clipped_step(critic, optimizer, cfg.grad_clip))
    updates = max(1, len(norms))
    for key, value in sums.items():
        stats.add_sum(key, value / updates)
    stats.add_max("critic/grad_norm", sum(norms) / updates)
    stats.add_max("critic/lr", scheduler.get_last_lr()[0])
    optim.advance_schedule(scheduler)


@dataclass
class Critic:
    """The trainer's critic: the value model, its optimizer and schedule, its compute plan and the
    token budgets of its two passes (None: micro-batches in rows)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plan: ComputePlan
    cfg: CriticConfig
    values_budget: int | None
    train_budget: int | None

    @classmethod
    def build(cls, cfg: Config, acc: Accelerator, place: Callable[[nn.Module], nn.Module], total_steps: int) -> Critic:
        """The value model from critic.model_path (else model.path) on `acc`, placed by `place` (the
        trainer's sharding); its passes follow actor.forward (packed unless that says plain) and
        model.gradient_checkpointing."""
        init = dataclasses.replace(cfg.model, path=cfg.critic.model_path or cfg.model.path)
        model = place(ValueModel(load_model(init, acc, trainable=True)))
        forward = "plain" if cfg.actor.forward == "plain" else "auto"  # no shared-prefix pass for the critic
        ckpt, offload = cfg.model.gradient_checkpointing, cfg.model.activation_offload
        plan = build_plan(model, acc, forward, "plain", ckpt, activation_offload=offload)
        optimizer = optim.build_optimizer(model, cfg.critic.optim)
        scheduler = optim.build_scheduler(optimizer, total_steps, cfg.critic.optim)
        budgets = cfg.token_budgets()
        values_budget, train_budget = (budgets[f"critic.{k}_max_token_len_per_device"] for k in ("forward", "ppo"))
        return cls(model, optimizer, scheduler, plan, cfg.critic, values_budget, train_budget)

    def values(self, batch: PolicyBatch, device: torch.device) -> torch.Tensor:
        micro = self.cfg.forward_micro_batch_size_per_device or self.cfg.ppo_micro_batch_size_per_device
        return compute_values(self.model, batch, micro, device, self.plan, self.values_budget)

    def update(
        self, batch: PolicyBatch, epochs: int, mini_groups: int, horizon: int, stats: StepStats,
        device: torch.device, world_size: int,
    ) -> None:  # fmt: skip
        update_critic(
            self.model, self.optimizer, self.scheduler, batch, self.cfg, epochs, mini_groups, horizon, stats, device,
            self.plan, self.train_budget, world_size,
        )  # fmt: skip
