"""The LM head in fp32 (`model.fp32_lm_head`; TRL's `cast_lm_head_to_fp32`, the ScaleRL / MiniMax-M1 fix).

In a bf16 model the logits leave the head's matmul rounded to bf16, 8 significant bits: up to 2^-9 of
each logit (0.03 at a logit of 16), which goes straight into every log-probability and from there into
the importance ratio of the loss. The trainer and the rollout engine run different kernels, and the
head (the largest activations of the model) is where their log-probabilities part most.

With the option the head multiplies the bf16 hidden state by the bf16 weight values in fp32 and returns
fp32 logits. Nothing is converted in place: a tied embedding stays tied and bf16, the checkpoint and the
merged model are unchanged; only the product keeps fp32 precision. That is the arithmetic of vLLM's
`hf_overrides={"head_dtype": "float32"}` (the cast path of its LogitsProcessor), which the vLLM rollout
sets with the same key, so both engines compute the same quantity (bench/fp32_head.py measures what one
side alone does).

Cost: an fp32 copy of the head weight during each forward (vocabulary x hidden x 4 bytes: 0.9 GB for
Qwen2.5-1.5B, transient) and the head's matmul at fp32 speed. An fp32 model is unaffected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from npu_rl.config.fields import ConfigError

__all__ = ["Fp32Head", "head_logits", "head_weights", "is_fp32_head", "use_fp32_head"]


def _fp32_weights(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    return weight.float(), None if bias is None else bias.float()


class Fp32Head(nn.Linear):
    """An `nn.Linear` output head whose product is computed and returned in fp32 (same parameters, same
    state-dict names: `use_fp32_head` only changes the class of the loaded head)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden.float(), *_fp32_weights(self.weight, self.bias))


def use_fp32_head(model: nn.Module) -> None:
    """Compute `model`'s output head in fp32 from now on, for the transformers forward and npu_rl's fused
    passes alike. A head that is not a plain `nn.Linear` (an adapter on it, a custom model) is refused:
    its forward would do something else than the fused passes assume."""
    head = model.get_output_embeddings()
    if isinstance(head, Fp32Head):
        return
    if type(head) is not nn.Linear:
        raise ConfigError(
            f"model.fp32_lm_head needs the model's output head to be a plain torch.nn.Linear; "
            f"{type(model).__name__}'s is {type(head).__name__} (set model.fp32_lm_head=false)"
        )
    head.__class__ = Fp32Head


def is_fp32_head(model: nn.Module) -> bool:
    return isinstance(getattr(model, "lm_head", None), Fp32Head)


def head_weights(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The head's weight and bias as its product uses them: fp32 copies of the values for an `Fp32Head`
    (the fast decoder prepares them once per generate and feeds the hidden state in fp32)."""
    head = model.lm_head
    if isinstance(head, Fp32Head):
        return _fp32_weights(head.weight, head.bias)
    return head.weight, head.bias


def head_logits(
    model: nn.Module,
    hidden: torch.Tensor,
    linear: Callable[..., torch.Tensor],
    weights: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """`model.lm_head` applied to `hidden` through the plan's `linear` kernel (the fused passes of
    npu_rl.llama and npu_rl.packing read the weights directly), in fp32 when the head is an `Fp32Head`.
    `weights`: `head_weights(model)` taken once by a caller that applies the head piece by piece (the
    chunked head), so an fp32 head's weight is cast once per pass and its gradient summed in fp32."""
    weight, bias = head_weights(model) if weights is None else weights
    return linear(hidden.float() if is_fp32_head(model) else hidden, weight, bias)
