"""Command line: ``polaropt`` (also ``python -m polaropt``)."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polaropt",
        description="Polar (scale × direction) weights for PyTorch, and a suite that reproduces the sources' claims.",
    )
    parser.add_argument("--version", action="version", version=f"polaropt {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
