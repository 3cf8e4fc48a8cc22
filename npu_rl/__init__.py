"""npu_rl: GRPO post-training for math-reasoning LLMs, Ascend NPU first, CUDA fallback, CPU everywhere."""

__version__ = "0.1.0"
