"""`python -m launch.train RUN_DIR`: one training rank (launch/train/worker.py), as torchrun starts it locally."""

import sys
from pathlib import Path

from launch.train.compat import import_deepspeed_without_mlflow

import_deepspeed_without_mlflow()
from launch.train.worker import EXIT_STATUS, main  # noqa: E402  (after the import above, which must come first)

sys.exit(EXIT_STATUS.get(main(Path(sys.argv[1])), 0))
