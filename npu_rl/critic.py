"""The critic for PPO with GAE: the policy's architecture with a scalar value head.

`ValueModel` keeps the causal LM's decoder (as `.model`, so FSDP2 finds its blocks like the actor's)
and replaces the LM head with a Linear(hidden, 1) initialised to zero, so every value starts at 0
and the first updates fit the returns instead of fighting a random head. V at response token t is
read at the position before it (the state the token was chosen in), as verl does.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from npu_rl import core_algos, distributed
from npu_rl.actor import PolicyBatch, clipped_step
from npu_rl.algos.policy_losses import value_loss
from npu_rl.config import CriticConfig
from npu_rl.metrics import StepStats


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


def _response_values(critic: nn.Module, micro: PolicyBatch) -> torch.Tensor:
    width = micro.response_width
    out = critic(micro.input_ids, micro.attention_mask, micro.position_ids)
    return out[:, -width - 1 : -1] * micro.response_mask


@torch.no_grad()
def compute_values(critic: nn.Module, batch: PolicyBatch, micro_batch: int, device: torch.device) -> torch.Tensor:
    """[N, T] values of the states before each response token (0 on mask-0 tokens)."""
    critic.eval()
    parts = [
        _response_values(critic, batch.slice(s, s + micro_batch).to(device)).cpu()
        for s in range(0, len(batch), micro_batch)
    ]
    return torch.cat(parts)


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
    world_size: int = 1,
) -> None:
    """Clipped value regression onto `batch.returns` around `batch.values` (the values at rollout),
    over the actor's mini-batches of whole groups, with the critic's own micro-batches; the loss is
    normalised by mini-batch totals over all ranks as the actor's is. Logs critic/{vf_loss,
    vf_clipfrac, vpred_mean, grad_norm, lr} (averaged over updates)."""
    critic.train()
    sums: dict[str, float] = defaultdict(float)
    norms: list[float] = []
    for _ in range(ppo_epochs):
        for mini in batch.split_groups(mini_batch_groups):
            seqs = float(core_algos.count_sequences(mini.response_mask))
            totals = distributed.all_reduce(torch.tensor([mini.response_mask.sum().item(), seqs]), "sum")
            optimizer.zero_grad(set_to_none=True)
            for start in range(0, len(mini), cfg.ppo_micro_batch_size_per_device):
                micro = mini.slice(start, start + cfg.ppo_micro_batch_size_per_device).to(device)
                mask = micro.response_mask
                vpreds = _response_values(critic, micro)
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
    scheduler.step()
