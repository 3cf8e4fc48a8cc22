#!/usr/bin/env bash
# Held-out greedy accuracy before -> after on the tiny CPU demo (run/tiny_grpo.sh) for each algorithm
# beyond GRPO, printed one line per variant. Each variant is a full demo run (1-2 min on 2 free
# cores of an AMD EPYC, plus ~4-5 min once if the base must be built); run on a quiet machine and
# paste the output with `lscpu | grep 'Model name'` into bench/README.md.
#
#   bash bench/algorithms_demo.sh [variant ...]     # default: rloo dapo ppo
#
# Variants (overrides on top of npu_rl/configs/tiny_grpo.yaml):
#   rloo   algorithm.adv_estimator=rloo
#   dapo   DAPO: dynamic sampling on acc (cap 10 generation batches), clip-higher 0.28, token-mean,
#          soft overlong punishment over the last 16 of 96 tokens
#   rpp    algorithm.adv_estimator=reinforce_plus_plus_baseline
#   ppo    PPO with a critic: algorithm.adv_estimator=gae (gamma = lam = 1), critic lr 1e-4 (untuned)
#   gspo   actor.policy_loss=gspo with seq-mean-token-mean (GSPO's clip ratios 3e-4 / 4e-4)
#   cispo  actor.policy_loss=cispo with clip_ratio_high 4 (MiniMax-M1's large upper bound)
#   sapo   actor.policy_loss=sapo (tau_pos 1, tau_neg 1.05)
#   gmpo   actor.policy_loss=geo_mean with log-ratio clip 0.4 (GMPO's)
#   clipcov  actor.policy_loss=clip_cov (verl's defaults: 2e-4 of the tokens, covariance in (1, 5))
#   klcov  actor.policy_loss=kl_cov (verl's defaults: 2e-4 of the tokens, coefficient 0.1)
#   entropy20  actor.top_entropy_quantile=0.2 (policy term on the top 20% of tokens by entropy)
#   bypass two updates per step (mini-batches of 8 prompts) in rollout correction's bypass mode, token
#          weights and token_k1 rejection outside [0.5, 2]: no old-logprob pass
#   twoupdates  the same two updates per step, weights and rejection, without bypass mode (its comparison)
#   remax  algorithm.adv_estimator=remax: the greedy answer's score as baseline, KL in the reward (k1, 0.001)
#          instead of the KL loss, as verl's remax example (its rollout.n=4 is not used: the demo's n stays)
#   otb    algorithm.adv_estimator=optimal_token_baseline (a baseline per group and response position)
#   vespo  actor.policy_loss=vespo with two updates per step (mini-batches of 8 prompts): TRL's defaults
#   luspo  actor.policy_loss=luspo (GSPO's ratio, length-weighted) with GSPO's clip ratios 3e-4 / 4e-4
#   opsm   two updates per step with off-policy sequence masking at 0.01 and the importance-corrected KL
#          loss (coefficient 0.01): DeepSeek-V3.2's stabilisers
#   adaptent  adaptive entropy control with target 0.3 nats, starting coefficient 0 (Skywork-OR1)
#   gdpo   algorithm.adv_estimator=gdpo (TRL's normalize_then_sum; the demo's one reward term: group then
#          batch normalization)
set -euo pipefail
cd "$(dirname "$0")/.."
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=(rloo dapo ppo)
overrides() {
    case "$1" in
        rloo) echo "algorithm.adv_estimator=rloo" ;;
        dapo) echo "algorithm.filter_groups.enable=true algorithm.filter_groups.metric=acc" \
                   "algorithm.filter_groups.max_num_gen_batches=10 actor.clip_ratio_high=0.28" \
                   "reward.overlong_buffer.enable=true reward.overlong_buffer.len=16" \
                   "reward.overlong_buffer.penalty_factor=1.0" ;;
        ppo) echo "algorithm.adv_estimator=gae critic.optim.lr=1e-4 critic.ppo_micro_batch_size_per_device=64" ;;
        rpp) echo "algorithm.adv_estimator=reinforce_plus_plus_baseline" ;;
        gspo) echo "actor.policy_loss=gspo actor.loss_agg_mode=seq-mean-token-mean" \
                   "actor.clip_ratio_low=3e-4 actor.clip_ratio_high=4e-4" ;;
        cispo) echo "actor.policy_loss=cispo actor.clip_ratio_high=4.0" ;;
        sapo) echo "actor.policy_loss=sapo" ;;
        gmpo) echo "actor.policy_loss=geo_mean actor.clip_ratio_low=0.4 actor.clip_ratio_high=0.4" ;;
        clipcov) echo "actor.policy_loss=clip_cov" ;;
        klcov) echo "actor.policy_loss=kl_cov" ;;
        entropy20) echo "actor.top_entropy_quantile=0.2" ;;
        bypass) echo "actor.ppo_mini_batch_size=8 algorithm.rollout_correction.bypass_mode=true" \
                     "algorithm.rollout_correction.rollout_is=token algorithm.rollout_correction.rollout_rs=token_k1" \
                     "algorithm.rollout_correction.rollout_rs_threshold=2" ;;
        twoupdates) echo "actor.ppo_mini_batch_size=8 algorithm.rollout_correction.rollout_is=token" \
                         "algorithm.rollout_correction.rollout_rs=token_k1" \
                         "algorithm.rollout_correction.rollout_rs_threshold=2" ;;
        remax) echo "algorithm.adv_estimator=remax actor.use_kl_loss=false algorithm.use_kl_in_reward=true" \
                    "algorithm.kl_penalty=kl algorithm.kl_coef=0.001" ;;
        otb) echo "algorithm.adv_estimator=optimal_token_baseline" ;;
        gdpo) echo "algorithm.adv_estimator=gdpo" ;;
        opsm) echo "actor.ppo_mini_batch_size=8 actor.off_policy_mask_threshold=0.01 actor.use_kl_loss=true" \
                   "actor.kl_loss_coef=0.01 actor.kl_loss_bias_correction=true" ;;
        adaptent) echo "actor.adaptive_entropy.enable=true actor.adaptive_entropy.target=0.3" ;;
        vespo) echo "actor.policy_loss=vespo actor.ppo_mini_batch_size=8" ;;
        luspo) echo "actor.policy_loss=luspo actor.clip_ratio_low=3e-4 actor.clip_ratio_high=4e-4" ;;
        *) echo "unknown variant '$1' (rloo, dapo, ppo, rpp, gspo, cispo, sapo, gmpo, clipcov, klcov, entropy20," \
                "bypass, twoupdates, remax, otb, gdpo, vespo, luspo, opsm, adaptent)" >&2; exit 2 ;;
    esac
}
summary=()
for v in "${variants[@]}"; do
    args=$(overrides "$v")
    echo "== $v: $args"
    # shellcheck disable=SC2086  # the overrides are words
    line=$(bash run/tiny_grpo.sh $args 2>&1 | tee "/tmp/npu_rl_algo_$v.log" \
        | grep "held-out greedy accuracy" | tail -1)
    summary+=("$v: ${line:-no result, see /tmp/npu_rl_algo_$v.log}")
done
echo "== summary ($(lscpu | grep 'Model name' | sed 's/ \+/ /g'))"
printf '%s\n' "${summary[@]}"
