"""`python -m npu_rl.config [--markdown]`: print the key reference (docs/config.md with --markdown)."""

from __future__ import annotations

import argparse

from npu_rl.config.reference import help_text, markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m npu_rl.config", description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print docs/config.md instead of plain text")
    args = parser.parse_args(argv)
    print(markdown() if args.markdown else help_text(), end="\n" if not args.markdown else "")


if __name__ == "__main__":
    main()
