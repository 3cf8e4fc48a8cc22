"""`npu-rl-train --config tiny_grpo key.sub=value ...` (= `python -m npu_rl.train`, or under torchrun).

`--config` takes a YAML file or the name of a config shipped in npu_rl/configs (tiny_grpo, qwen2_5_1_5b_grpo).
"""

from __future__ import annotations

import argparse
import sys

from npu_rl import configs
from npu_rl.cli import entry_point
from npu_rl.config import describe_groups, load_config
from npu_rl.env_report import check_stack


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m npu_rl.train",
        description="GRPO training. Settings come from --config (YAML) and dotted overrides such as "
        "rollout.n=8 actor.optim.lr=1e-6 trainer.logger=[console,jsonl].",
        epilog="config keys (dotted name, type, default, allowed values; docs/config.md has the same table):\n"
        + describe_groups(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", help=f"YAML file with the config groups, or a packaged config: {', '.join(configs.available())}"
    )
    parser.add_argument(
        "--check", action="store_true",
        help="read and check the config, data, reward and model config without loading weights, then exit",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="dotted overrides, key.sub=value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train and return the last metrics; `cli` is the same with input mistakes reported as one message."""
    args = parse_args(argv)
    cfg = load_config(configs.resolve(args.config) if args.config else None, args.overrides)
    # mismatched torch / torch_npu (/ vLLM / vllm-ascend when the run uses them): one message now, not a crash later
    check_stack(with_vllm=cfg.rollout.name == "vllm")
    if args.check:
        from npu_rl import preflight

        return preflight.report(cfg)
    from npu_rl.trainer import GRPOTrainer  # heavy imports only once the config is valid

    trainer = GRPOTrainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.close()


# The command line (and console script): input mistakes end as one message and exit code 2.
cli = entry_point("npu_rl.train")(main)

if __name__ == "__main__":
    sys.exit(cli())
