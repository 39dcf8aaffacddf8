"""The fixed cost of a training rank's process: importing its libraries and exiting, every start of every rank.

Two interpreters are timed from spawn to exit, alternately, `--repeats` times each:
- baseline: the imports a rank needs (deepspeed, megatron-core, launch.train.worker), plainly, and a normal exit;
- corolla: the same imports through `compat.import_training_libraries` (no MLflow, no TorchDynamo) and the end
  `python -m launch.train` makes (streams flushed, the interpreter's teardown skipped).
Printed: the median seconds of each and their ratio (corolla / baseline; below 1.0 is faster).

    .venv/bin/python benchmarks/rank_start.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

BASELINE = "import deepspeed, megatron.core.tensor_parallel, launch.train.worker"
COROLLA = (
    "import os, sys\n"
    "from launch.compat import import_training_libraries\n"
    "import_training_libraries()\n"
    "import launch.train.worker\n"
    "sys.stdout.flush(); sys.stderr.flush(); os._exit(0)\n"
)


def seconds(program: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    seconds(BASELINE)  # the first import of a fresh install compiles bytecode: not a rank's cost
    times: dict[str, list[float]] = {"baseline": [], "corolla": []}
    for _ in range(repeats):
        times["baseline"].append(seconds(BASELINE))
        times["corolla"].append(seconds(COROLLA))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"a rank's imports and exit, median of {repeats} ({sys.version.split()[0]}, {Path(sys.executable)})")
    for name, median in medians.items():
        print(f"  {name:9s} {median:6.2f} s   ({', '.join(f'{value:.2f}' for value in times[name])})")
    print(f"  ratio     {medians['corolla'] / medians['baseline']:6.2f}   (corolla / baseline)")


if __name__ == "__main__":
    main()
