"""Device-specific kernels, imported only by `npu_rl.compute.build_plan` (never directly by the
trainer, actor or rollout), so the choice of kernels is made once, at start-up, in one place."""
