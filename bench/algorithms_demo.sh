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
        *) echo "unknown variant '$1' (rloo, dapo, ppo, rpp, gspo)" >&2; exit 2 ;;
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
