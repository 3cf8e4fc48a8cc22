"""verl's sequence-level and covariance policy losses (geo_mean, sapo, clip_cov, kl_cov) against values
computed by hand, their fixed aggregation, their config keys and verl's spellings of them."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from npu_rl import core_algos
from npu_rl.config import ActorConfig, ConfigError, load_config


def _load(overrides):
    return load_config(None, ["model.path=m", "data.train_files=[a]", *overrides])


def _loss(name, logprob, old, adv, mask, **params):
    cfg = ActorConfig(clip_ratio_low=0.2, clip_ratio_high=0.2)
    for key, value in params.items():
        setattr(cfg.policy_loss_params, key, value)
    loss_mat, stats = core_algos.POLICY_LOSSES[name](logprob, old, adv, mask, cfg)
    agg = core_algos.policy_agg_mode(name, cfg.loss_agg_mode)
    return core_algos.aggregate_loss(loss_mat, mask, agg), loss_mat, stats


def test_geo_mean_clips_log_ratios_on_the_helpful_side_and_averages_sequences():
    # row 0: A = +1, log-ratios 0.1, 0.5 and a padded token -> 0.1, 0.2 (clipped above); row 1: A = -1,
    # log-ratios -0.5, 0.3, 0 -> -0.2 (clipped below), 0.3 (A < 0 keeps the larger), 0. Ratio: exp(mean).
    old = torch.zeros(2, 3)
    logprob = torch.tensor([[0.1, 0.5, 9.0], [-0.5, 0.3, 0.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, 0.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss, loss_mat, stats = _loss("geo_mean", logprob, old, adv, mask)
    seq = torch.tensor([-math.exp(0.15), math.exp(0.1 / 3)])
    torch.testing.assert_close(loss_mat * mask, seq[:, None] * mask)
    # the mean over sequences, although the actor says token-mean (which would weigh row 1 by 3/5)
    torch.testing.assert_close(loss, seq.mean())
    loss.backward()
    # d/d logprob_t = -A_i exp(mean) / len_i / 2 sequences on unclipped tokens, 0 on clipped ones
    row1 = math.exp(0.1 / 3) / 3 / 2
    torch.testing.assert_close(logprob.grad, torch.tensor([[-math.exp(0.15) / 4, 0.0, 0.0], [0.0, row1, row1]]))
    # verl counts every token whose log-ratio differs from its clamp, by the sign of A
    assert stats["pg_clipfrac"] == pytest.approx(1 / 5) and stats["pg_clipfrac_lower"] == pytest.approx(2 / 5)
    assert stats["ppo_kl"] == pytest.approx(-(0.1 + 0.5 - 0.5 + 0.3) / 5)


def test_geo_mean_empty_row_and_zero_advantage_add_nothing():
    logprob = torch.tensor([[0.3, 0.1], [0.2, 0.0]], requires_grad=True)
    adv = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    loss, _, _ = _loss("geo_mean", logprob, torch.zeros(2, 2), adv, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logprob.grad, torch.zeros(2, 2))


def test_sapo_gate_by_hand_and_its_gradient_at_ratio_one_is_the_policy_gradient():
    tau_pos, tau_neg = 1.0, 1.05
    adv = torch.tensor([[1.0, -2.0, 0.0, 1.0]])
    old = torch.zeros(1, 4)
    logprob = torch.tensor([[0.0, 0.0, 0.0, math.log(1.5)]], requires_grad=True)
    mask = torch.ones(1, 4)
    _, loss_mat, stats = _loss("sapo", logprob, old, adv, mask)
    gate = torch.tensor(
        [
            2.0 / tau_pos,  # sigmoid(0) * 4 / tau
            2.0 / tau_neg,
            2.0 / tau_neg,  # A = 0 takes tau_neg (verl)
            torch.sigmoid(torch.tensor(tau_pos * 0.5)).item() * 4.0 / tau_pos,
        ]
    )
    torch.testing.assert_close(loss_mat, -gate * adv)
    loss_mat[:, :3].sum().backward()
    torch.testing.assert_close(logprob.grad[:, :3], -adv[:, :3])  # 4 s (1 - s) rho = 1 at rho = 1
    assert stats["pg_clipfrac"] == 0 and stats["ppo_kl"] == pytest.approx(-math.log(1.5) / 4)
    assert core_algos.policy_agg_mode("sapo", "token-sum") == "seq-mean-token-mean"
    assert core_algos.policy_agg_mode("vanilla", "token-sum") == "token-sum"


# Covariance example: A = 2, 1, -1, -2 (mean 0); log pi = -0.1, -1, -2, -3 (mean -1.525), so
# (A - mean A)(log pi - mean log pi) = 2.85, 0.525, 0.475, 2.95: tokens 0 and 3 lie in (1, 5).
ADV = torch.tensor([[2.0, 1.0, -1.0, -2.0, 7.0]])
LOGP = torch.tensor([[-0.1, -1.0, -2.0, -3.0, 50.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])  # the padded token would dominate any statistic


def test_clip_cov_removes_one_random_high_covariance_token():
    picked = set()
    for seed in range(12):
        torch.manual_seed(seed)
        logprob = LOGP.clone().requires_grad_()
        loss, _, stats = _loss("clip_cov", logprob, LOGP, ADV, MASK, clip_cov_ratio=0.25)
        loss.backward()
        removed = [t for t in range(4) if logprob.grad[0, t] == 0]
        assert len(removed) == 1 and removed[0] in (0, 3)
        picked.add(removed[0])
        kept = [t for t in range(4) if t not in removed]
        torch.testing.assert_close(logprob.grad[0, kept], -ADV[0, kept] / 4)  # token-mean over 4 tokens
        assert stats["pg_clipfrac"] == pytest.approx(1 / 4)
    assert picked == {0, 3}, "the removed token is drawn at random among the candidates"


def test_clip_cov_leaves_ppo_clipped_tokens_to_ppo():
    # token 0's ratio is 1.5 (> 1.2 with A > 0): PPO's clip already takes its gradient, so only token 3 is
    # a candidate even though clip_cov_ratio asks for two tokens.
    old = LOGP - torch.tensor([[math.log(1.5), 0.0, 0.0, 0.0, 0.0]])
    logprob = LOGP.clone().requires_grad_()
    loss, loss_mat, stats = _loss("clip_cov", logprob, old, ADV, MASK, clip_cov_ratio=0.5)
    loss.backward()
    assert logprob.grad[0, 0] == 0 and logprob.grad[0, 3] == 0
    assert loss_mat[0, 0].item() == pytest.approx(-2.0 * 1.2) and loss_mat[0, 3].item() == 0
    assert stats["pg_clipfrac"] == pytest.approx(1 / 4)
    bounds = {"clip_cov_lb": 3.0, "clip_cov_ub": 5.0}  # no token between: nothing removed
    assert _loss("clip_cov", LOGP, LOGP, ADV, MASK, **bounds)[2]["pg_clipfrac"] == 0


def test_kl_cov_penalises_the_largest_covariance_tokens():
    old = LOGP - 0.1
    logprob = LOGP.clone().requires_grad_()
    loss, loss_mat, stats = _loss("kl_cov", logprob, old, ADV, MASK, kl_cov_ratio=0.25, ppo_kl_coef=0.5)
    ratio = math.exp(0.1)
    want = -ADV * ratio
    want[0, 3] += 0.5 * 0.1  # 2.95: the largest covariance
    torch.testing.assert_close(loss_mat * MASK, want * MASK)
    loss.backward()
    grad = -ADV * ratio
    grad[0, 3] += 0.5
    torch.testing.assert_close(logprob.grad, grad * MASK / 4)
    assert stats["ppo_kl"] == pytest.approx(0.1) and stats["pg_clipfrac"] == pytest.approx(1 / 4)
    two = _loss("kl_cov", LOGP, old, ADV, MASK, kl_cov_ratio=0.5)[1]  # the two largest: tokens 3 and 0
    assert (two * MASK - (-ADV * ratio) * MASK > 0).nonzero()[:, 1].tolist() == [0, 3]


def test_kl_cov_with_no_valid_token_is_zero():
    loss, _, stats = _loss("kl_cov", LOGP, LOGP - 0.1, ADV, torch.zeros(1, 5))
    assert loss.item() == 0 and stats["pg_clipfrac"] == 0


def test_fixed_aggregation_is_announced_and_bounds_are_checked(capsys):
    _load(["actor.policy_loss=sapo"])
    assert "actor.policy_loss=sapo is always reduced as seq-mean-token-mean" in capsys.readouterr().err
    _load(["actor.policy_loss=geo_mean", "actor.loss_agg_mode=seq-mean-token-mean"])
    assert "always reduced" not in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"actor.policy_loss_params.clip_cov_lb \(5.0\) must be below"):
        _load(["actor.policy_loss_params.clip_cov_lb=5.0"])


def test_verl_spellings_of_the_loss_parameters():
    verl = "actor_rollout_ref.actor"
    cfg = _load(
        [
            f"{verl}.policy_loss.loss_mode=kl_cov",
            f"{verl}.policy_loss.kl_cov_ratio=0.01",
            f"{verl}.policy_loss.ppo_kl_coef=1.0",
            f"{verl}.tau_neg=2.0",
        ],
    )
    assert cfg.actor.policy_loss == "kl_cov"
    params = cfg.actor.policy_loss_params
    assert (params.kl_cov_ratio, params.ppo_kl_coef, params.tau_neg, params.tau_pos) == (0.01, 1.0, 2.0, 1.0)


STAND_IN_STATS = """
def masked_sum(values, mask, axis=None):
    return (values * mask).sum(axis=axis)


def masked_mean(values, mask, axis=None):
    return masked_sum(values, mask, axis) / mask.sum(axis=axis)


def get_constant_schedule_with_warmup(optimizer, num_warmup_steps, last_epoch=-1):
    # a warmup one step ahead of verl's (which starts at 0)
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, num_warmup_steps)), last_epoch)
"""

STAND_IN = """
def register_policy_loss(name):  # verl's decorator: the script drops it
    raise AssertionError("decorators are not run")


def agg_loss(loss_mat, loss_mask, loss_agg_mode, **batch_info):
    if loss_agg_mode == "token-mean":
        return (loss_mat * loss_mask).sum() / loss_mask.sum()
    rows = loss_mask.sum(-1) > 0
    per_row = (loss_mat * loss_mask).sum(-1) / loss_mask.sum(-1).clamp(min=1)
    return per_row[rows].mean()


@register_policy_loss("gpg")
def compute_policy_loss_gpg(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config=None):
    return agg_loss(-advantages * log_prob, response_mask, loss_agg_mode, **config.global_batch_info), {}


@register_policy_loss("cispo")
def compute_policy_loss_cispo(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config=None):
    ratio = torch.exp(log_prob - old_log_prob).detach()  # the weight left unclipped: a wrong CISPO
    loss = agg_loss(-ratio * advantages * log_prob, response_mask, loss_agg_mode)
    return loss, {"actor/ppo_kl": verl_F.masked_mean(old_log_prob - log_prob, response_mask).item()}


def compute_rloo_outcome_advantage(token_level_rewards, response_mask, index, config=None):
    scores = token_level_rewards.sum(-1)
    groups = defaultdict(list)
    for row, uid in enumerate(index):
        groups[uid].append(row)
    out = scores.clone()
    for rows in groups.values():
        if len(rows) > 1:
            out[rows] = (scores[rows] - scores[rows].mean()) * len(rows) / (len(rows) - 1)
    return out[:, None] * response_mask, out[:, None] * response_mask


def compute_opo_outcome_advantage(token_level_rewards, response_mask, index, config=None):
    scores = token_level_rewards.sum(-1)  # OPO without its baseline: wrong
    return scores[:, None] * response_mask, scores[:, None] * response_mask
"""


def test_verl_parity_script_compares_with_the_functions_it_is_given(tmp_path):
    """bench/verl_parity.py (run by hand against a verl checkout) finds agreement and disagreement."""
    ppo, utils = tmp_path / "verl" / "trainer" / "ppo", tmp_path / "verl" / "utils"
    ppo.mkdir(parents=True)
    utils.mkdir()
    (ppo / "core_algos.py").write_text(STAND_IN)
    (utils / "torch_functional.py").write_text(STAND_IN_STATS)
    script = Path(__file__).resolve().parents[1] / "bench" / "verl_parity.py"
    done = subprocess.run(
        [sys.executable, str(script), "--verl", str(tmp_path), "--trials", "5"], capture_output=True, text=True
    )
    assert done.returncode == 1, done.stdout + done.stderr
    number = r"(\d\.\d\de[+-]\d\d)"
    losses = {
        (m[1], m[2]): (float(m[3]), float(m[4]))
        for m in re.finditer(rf"^(\S+) +(\S+) +{number} +{number}$", done.stdout, re.M)
    }
    estimators = {
        m[1]: (float(m[2]), float(m[3])) for m in re.finditer(rf"^(\S+) +{number} +{number}$", done.stdout, re.M)
    }
    assert losses["gpg", "token-mean"] == (0.0, 0.0) and losses["gpg", "seq-mean-token-mean"] == (0.0, 0.0)
    assert losses["cispo", "token-mean"][0] > 1e-3 and losses["cispo", "token-mean"][1] == 0
    assert max(estimators["rloo"]) < 1e-6 and min(estimators["opo"]) > 1e-3
    schedule = re.search(rf"^lr schedule constant \(lr diff\) +{number}$", done.stdout, re.M)
    assert schedule and float(schedule[1]) > 0.1


def test_luspo_is_gspo_weighted_by_length_as_trl_computes_it():
    gen = torch.Generator().manual_seed(4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    old = torch.randn(3, 4, generator=gen)
    logprob = (old + 0.3 * torch.randn(3, 4, generator=gen)).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 0.5])[:, None] * torch.ones(3, 4)
    loss, _, _ = _loss("luspo", logprob, old, adv, mask)
    # TRL's sequence-level luspo: s = exp(mean log-ratio), -min(s A, clip(s) A) per sequence, times its length
    seq_ratio = torch.exp(((logprob - old) * mask).sum(-1) / mask.sum(-1))
    per_seq = -torch.minimum(seq_ratio * adv[:, 0], seq_ratio.clamp(0.8, 1.2) * adv[:, 0])
    trl = (per_seq * mask.sum(-1)).mean()
    torch.testing.assert_close(loss, trl)
    (ours_grad,) = torch.autograd.grad(loss, logprob)
    (trl_grad,) = torch.autograd.grad(trl, logprob)
    torch.testing.assert_close(ours_grad * mask, trl_grad * mask)


def test_vespo_weights_each_sequence_by_its_gamma_shaped_ratio():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    old = torch.zeros(2, 3)
    logprob = torch.tensor([[0.2, 0.3, 5.0], [-0.4, 0.1, -0.1]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    _, loss_mat, stats = _loss("vespo", logprob, old, adv, mask)
    # row 0: w = e^0.5, A >= 0: k 2, lambda 3; row 1: w = e^-0.4, A < 0: k 3, lambda 2 (TRL's defaults)
    phi = torch.tensor([math.exp(3 + 2 * 0.5 - 3 * math.exp(0.5)), math.exp(2 + 3 * -0.4 - 2 * math.exp(-0.4))])
    torch.testing.assert_close(loss_mat * mask, -phi[:, None] * adv * logprob.detach() * mask)
    (grad,) = torch.autograd.grad((loss_mat * mask).sum(), logprob)
    torch.testing.assert_close(grad, -phi[:, None] * adv * mask)  # the weight is held constant
    assert stats["vespo_weight"] == pytest.approx(float((phi[0] * 2 + phi[1] * 3) / 5))
    # on-policy (w = 1) the weight is 1: the plain policy gradient, as gpg
    on_policy, _, _ = _loss("vespo", logprob, logprob.detach(), adv, mask)
    gpg, _, _ = _loss("gpg", logprob, logprob.detach(), adv, mask)
    torch.testing.assert_close(on_policy, gpg)
