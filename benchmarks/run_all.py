"""Run every benchmark of the README's "Benchmarks" section, one after the other, each writing
``benchmarks/results/NAME.json`` and ``NAME.png``: the one command for a full measurement.

Usage::

    python benchmarks/run_all.py [--quick] [--only chain saga ...]

Run it on a quiet machine (nothing else busy): every script records the load average at its
start in its JSON, so a noisy run shows.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["BENCHMARKS", "main"]

BENCHMARKS = ("chain", "throughput", "saga", "recovery", "checkout")
HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="each script's --quick (under two minutes each)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    failed = []
    for name in args.only:
        began = time.monotonic()
        print(f"=== {name} ===", flush=True)
        command = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if args.quick else [])]
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(name)
        print(f"=== {name}: {time.monotonic() - began:.0f} s ===", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
