"""`python -m npu_rl.train --config run/configs/X.yaml key.sub=value ...` (or under torchrun)."""

from __future__ import annotations

import argparse
import sys

from npu_rl.config import ConfigError, describe_groups, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m npu_rl.train",
        description="GRPO training. Settings come from --config (YAML) and dotted overrides such as "
        "rollout.n=8 actor.optim.lr=1e-6 trainer.logger=[console,jsonl].",
        epilog="config keys (dotted name, type, default, allowed values; docs/config.md has the same table):\n"
        + describe_groups(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with the config groups (optional)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, key.sub=value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    from npu_rl.trainer import GRPOTrainer  # heavy imports only once the config is valid

    trainer = GRPOTrainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
