"""A discriminative reward model (verl's "DisRM", `reward_model.enable` with a model path): a classifier
with one label whose output at the last token of (prompt, response) is the reward.

It is one term of reward.functions (`{name: reward_model, weight: w}`), beside rule-based terms: a hybrid
reward (say, a correctness check plus a preference model) is a weighted sum. It scores in the trainer
process on the accelerator, in micro-batches, after the rule-based terms were graded by the workers:
the prompt's chat messages plus `{"role": "assistant", "content": response}` are rendered with the
reward model's own chat template, cut from the right at `reward.model.max_length` tokens, right-padded,
and the logit at each row's last real token is its score. As verl's RewardModelWorker (main of
2026-01-29): a token-classification head with one label (a sequence-classification checkpoint such as
Skywork-Reward loads into it with the same `score` weights; the bias it lacks is zero), the last attended
token, right truncation. A folder without a head (a language model, which would load with a random one)
is refused. Every rank holds a whole copy (reward models are small next to the policy); dropout is off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from npu_rl.config.fields import ConfigError
from npu_rl.config.objective import RewardModelConfig
from npu_rl.device import Accelerator
from npu_rl.model import MODEL_FILES, TOKENIZER_FILES, disable_dropout, dtype_kwarg, pretrained, resolve_dtype


class RewardModel:
    def __init__(self, cfg: RewardModelConfig, acc: Accelerator, local_rank: int = 0) -> None:
        assert cfg.path, "reward.model.path is checked by RewardConfig"
        self.cfg = cfg
        self.device = acc.torch_device(local_rank)
        tok_path = cfg.tokenizer_path or cfg.path
        tok_key = "reward.model.tokenizer_path" if cfg.tokenizer_path else "reward.model.path"
        trust = cfg.trust_remote_code
        self.tokenizer = pretrained(AutoTokenizer, tok_path, tok_key, TOKENIZER_FILES, trust_remote_code=trust)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                f"{tok_key}={tok_path!r}: the reward model's tokenizer has no chat template to render with"
            )
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.model, info = pretrained(
            AutoModelForTokenClassification, cfg.path, "reward.model.path", MODEL_FILES,
            num_labels=1, trust_remote_code=cfg.trust_remote_code, output_loading_info=True,
            **dtype_kwarg(resolve_dtype(cfg.dtype, acc)),
        )  # fmt: skip
        head = [k for k in info["missing_keys"] if not k.startswith(self.model.base_model_prefix + ".")]
        if any(not k.endswith(".bias") for k in head):  # a language model's folder loads too, with a random head
            raise ConfigError(
                f"reward.model.path={cfg.path!r} has no classification head ({', '.join(sorted(head))} not in the "
                "checkpoint): point it to a reward model (a sequence- or token-classification checkpoint)"
            )
        params = dict(self.model.named_parameters())
        for name in head:  # a sequence-classification head has no bias: the token head's is zero
            params[name].data.zero_()
        disable_dropout(self.model)
        self.model.requires_grad_(False).eval().to(self.device)

    def render(self, prompt: Any, response: str) -> str:
        """The reward model's view of one answer: the prompt's messages (a plain prompt as one user
        message, none when unknown) and the response as the assistant's turn, in its own chat template."""
        if prompt is None:
            messages = []
        else:
            messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        messages.append({"role": "assistant", "content": response})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response): the logit at the last token the model reads."""
        rows = [
            self.tokenizer(self.render(p, r), add_special_tokens=False)["input_ids"][: self.cfg.max_length]
            for p, r in zip(prompts, responses, strict=True)
        ]
        scores: list[float] = []
        for start in range(0, len(rows), self.cfg.micro_batch_size):
            part = rows[start : start + self.cfg.micro_batch_size]
            width = max(1, max(len(r) for r in part))
            ids = torch.full((len(part), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for i, row in enumerate(part):
                ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row, dtype=torch.long), 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits[..., 0]
            last = (mask.sum(-1) - 1).clamp(min=0).to(self.device)
            scores.extend(logits[torch.arange(len(part), device=self.device), last].float().cpu().tolist())
        return scores
