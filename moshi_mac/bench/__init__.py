"""`moshi-mac bench`: moshi-mac against the official PyTorch `moshi` and `moshi_mlx`.

The harness ships inside the package (run.py orchestrates; bench_lm.py and bench_codec.py
run one case per process; common.py, impls.py, report.py and bandwidth.py hold what they
share), so an installed moshi-mac benchmarks itself with no source checkout. The
references are optional (the `reference` extra); results go to the user's cache folder
unless -o/--output says otherwise. benchmarks/ in the repository keeps the published
results, their plots and README, and the standalone studies that import this harness.
"""

from __future__ import annotations

HELP = "benchmark moshi-mac (and, when installed, PyTorch moshi and moshi_mlx)"


def register(subparsers) -> None:
    from . import run

    p = subparsers.add_parser("bench", help=HELP, description=run.__doc__.split("\n\n")[0])
    run.add_arguments(p)
    p.set_defaults(func=lambda args: run.run(run.check_args(args, p.error)))
