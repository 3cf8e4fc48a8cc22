"""Algorithm families beyond GRPO, as pure tensor functions registered in npu_rl.core_algos's
registries (importing npu_rl.core_algos registers them; use the names there)."""
