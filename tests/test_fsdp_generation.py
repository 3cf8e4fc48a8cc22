"""Generation from an FSDP2-sharded policy when ranks finish at different steps.

Each forward of a sharded model all-gathers its layers, so a rank that stops decoding early would
leave the others waiting forever. The trainer generates inside `distributed.gathered_params`,
which holds full weights for the duration, so decode steps issue no collectives.
"""

import os

import pytest
import torch
from _dist_utils import run_workers
from transformers import AutoModelForCausalLM

from npu_rl import distributed
from npu_rl.config import FSDPConfig
from npu_rl.device import Accelerator
from npu_rl.rollout.base import SamplingParams
from npu_rl.rollout.hf import HFRollout


def _generate_uneven(info, model_dir: str) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = distributed.shard_model(model, FSDPConfig(), Accelerator("cpu"), info, trainable=True)
    vocab = model.config.vocab_size
    # Rank 0 treats every token as EOS (stops after one step); rank 1 never stops before the limit.
    eos = list(range(vocab)) if info.rank == 0 else [vocab + 1]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6)
    prompts = [[5, 6, 7], [8, 9]]
    with distributed.gathered_params(model):
        out = HFRollout(model, eos, pad_token_id=0).generate(prompts, params, seeds=[1, 2])
    expected = HFRollout(reference, eos, pad_token_id=0).generate(prompts, params, seeds=[1, 2])
    assert torch.equal(out.response_ids, expected.response_ids)
    assert out.lengths.tolist() == ([1] * 4 if info.rank == 0 else [6] * 4)
    # after the context the model is sharded again and trains as before
    loss = model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum()
    loss.backward()
    assert all(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters())


@pytest.mark.slow  # spawns processes: ~10-40 s; the quick subset keeps the single-process tests
@pytest.mark.dist
def test_ranks_that_finish_at_different_steps_do_not_hang(tiny_model_dir):
    run_workers(_generate_uneven, 2, str(tiny_model_dir))


def test_gathered_params_is_a_no_op_on_a_plain_module(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with distributed.gathered_params(model):
        pass


ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def test_a_single_accelerator_process_joins_a_world_of_one(monkeypatch):
    """Without torchrun on an accelerator, FSDP2 still runs (fp32 master weights); on the CPU nothing starts."""
    for key in ENV_KEYS:  # set-then-delete records "absent" as the state to restore afterwards
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    started = {}

    class FakeNpu(Accelerator):
        def set_device(self, local_rank: int) -> None:
            started["device"] = local_rank

        def torch_device(self, local_rank: int = 0) -> torch.device:
            return torch.device("cpu")

        @property
        def dist_backend(self) -> str:
            return "gloo"

    info = distributed.init_distributed(FakeNpu("npu"))
    try:
        assert (info.rank, info.world_size, info.is_distributed) == (0, 1, True)
        assert started == {"device": 0}
    finally:
        distributed.destroy()
    for key in ENV_KEYS:
        os.environ.pop(key, None)
    assert distributed.init_distributed(Accelerator("cpu")).is_distributed is False
