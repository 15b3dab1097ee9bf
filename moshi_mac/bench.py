"""`moshi-mac bench`: moshi-mac against the official PyTorch `moshi` and `moshi_mlx`.

The benchmark's code lives in the source checkout's `benchmarks/` folder (run.py and the
modules it imports), not in the installed package: this command runs that folder's
`run.main` with every argument after `bench` (see `moshi-mac bench --help`).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .errors import MoshiMacError

HELP = "benchmark against PyTorch moshi and moshi_mlx (from a source checkout)"


def register(subparsers) -> None:
    # '+' prefix: every '-' option after `bench` goes to benchmarks/run.py's own parser,
    # which also answers --help.
    p = subparsers.add_parser("bench", help=HELP, description=__doc__.split("\n\n")[0],
                              prefix_chars="+", add_help=False)
    p.add_argument("bench_args", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=main)


def benchmarks_dir() -> Path:
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    if not (folder / "run.py").is_file():
        raise MoshiMacError(f"moshi-mac bench runs the benchmarks/ folder of a source checkout, "
                            f"and {folder} is not there (an installed wheel has none): clone the "
                            f"repository, `pip install -e '.[dev]'` and run it from the clone")
    return folder


def main(args) -> int:
    folder = benchmarks_dir()
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # run.py imports its sibling modules by name
    spec = importlib.util.spec_from_file_location("moshi_mac_bench_run", folder / "run.py")
    run = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(run)
    except ImportError as e:
        raise MoshiMacError(f"the benchmark needs {e.name}: pip install -e '.[dev]'") from None
    return run.main(list(args.bench_args))
