"""The ``cvm-prelaunch-operator`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cvm_prelaunch_operator import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvm-prelaunch-operator",
        description="Keeps the pre-launch script of Phala Cloud CVMs in sync with Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
