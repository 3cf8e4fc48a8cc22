"""The rollout interface every generation backend implements (transformers, vLLM / vllm-ascend)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from npu_rl.config import RolloutConfig


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; temperature 0 means greedy decoding."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    max_new_tokens: int = 256
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off

    @classmethod
    def for_training(cls, r: RolloutConfig) -> SamplingParams:
        """The training rollouts' sampling, from `rollout.*` (the trainer's and `--check`'s)."""
        return cls(r.n, r.temperature, r.top_p, r.top_k, r.max_new_tokens, r.min_p, r.repetition_penalty)


@dataclass
class RolloutOutput:
    """Sampled responses, one per row; `group[i]` is the position (in the prompts given to
    `generate`) of the prompt row i answers and `sample[i]` its sample number within that prompt.

    Rows come grouped by prompt, but nothing may rely on a fixed count per prompt: read `group`.
    `response_ids` is right-padded with `pad_token_id`; `logprobs` holds, per generated token, the
    log-probability the engine sampled it with (of the temperature-scaled distribution; 0 past the end).
    `finish_reasons` is "stop" (EOS or a stop token) or "length" (hit max_new_tokens).
    `token_mask` marks the tokens the policy generated (multi-turn: tool answers inside the response
    are 0, out of the loss and the grading); None means the first `lengths` tokens.
    `row_metrics` holds per-row values a backend reports (multi-turn: turns, tool calls), logged as means.
    """

    response_ids: torch.Tensor  # [R, T] long
    logprobs: torch.Tensor  # [R, T] float32
    lengths: torch.Tensor  # [R] long, number of real tokens (EOS included when emitted)
    finish_reasons: list[str]
    group: torch.Tensor  # [R] long, index of the row's prompt
    sample: torch.Tensor  # [R] long, the row's sample number within its prompt
    token_mask: torch.Tensor | None = None  # [R, T] float
    row_metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [R] float

    @property
    def truncated(self) -> list[bool]:
        """Rows cut off at max_new_tokens: their answer never finished, so rewards grade them as none."""
        return [reason == "length" for reason in self.finish_reasons]

    def decode(self, tokenizer: Any) -> list[str]:
        """Response texts (special tokens dropped) for the reward, from the policy's own tokens only
        (tool answers are left out: a tool must not be able to write the graded answer)."""
        ids, keep = self.response_ids.tolist(), self.response_mask.bool().tolist()
        return tokenizer.batch_decode(
            [[t for t, k in zip(row, mask, strict=True) if k] for row, mask in zip(ids, keep, strict=True)],
            skip_special_tokens=True,
        )

    @property
    def response_mask(self) -> torch.Tensor:
        """[R, T] 1.0 where the token is the policy's (in the loss), 0.0 at tool answers and padding."""
        if self.token_mask is not None:
            return self.token_mask
        steps = torch.arange(self.response_ids.shape[1], device=self.lengths.device)
        return (steps[None, :] < self.lengths[:, None]).to(torch.float32)


class RolloutEngine(Protocol):
    """A generation engine colocated with the trainer."""

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> RolloutOutput:
        """Sample `params.n` responses for each prompt (token ids, no padding).

        `seeds` (one per prompt) make each prompt's samples reproducible whatever else is in the
        batch, on any number of ranks and across a resume; None draws from the global RNG.
        """
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load the trainer's current weights; a backend sharing the trainer's module does nothing."""
        ...

    def sleep(self) -> None:
        """Release generation memory (KV cache, gathered weights) while the trainer updates."""
        ...

    def wake_up(self) -> None:
        """Reacquire what `sleep` released before the next generate."""
        ...

    def close(self) -> None:
        """Free the engine for good (before the process group goes: vLLM's shutdown uses it)."""
        ...


def grouped(n: int, num_prompts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(group, sample) of `num_prompts` x `n` prompt-major rows: the layout both engines produce."""
    group = torch.arange(num_prompts, dtype=torch.long).repeat_interleave(n)
    sample = torch.arange(n, dtype=torch.long).repeat(num_prompts)
    return group, sample
