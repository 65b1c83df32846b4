"""`--quick` for the benchmarks: the same measurement on less data or fewer repeats.

A quick run goes through the same code path and prints the same table and JSON keys as the default
(long) run, only smaller, so that `make bench` (bench/run_all.py) can run every benchmark in minutes
and a broken benchmark shows up there rather than on the day its figures are needed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None, **quick: object) -> argparse.Namespace:
    """Add `--quick` to `parser` and parse `argv`. With --quick, the `quick` values (option dest -> value)
    replace the defaults; options given on the command line still win, so `--quick --repeats 3` works."""
    sizes = ", ".join(f"--{name.replace('_', '-')} {value:,}" if isinstance(value, int) else
                      f"--{name.replace('_', '-')} {value}" for name, value in quick.items())
    parser.add_argument("--quick", action="store_true",
                        help=f"the same measurement, smaller: {sizes} (options given explicitly still win)")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args
