"""`python -m launch.train RUN_DIR`: one training rank (launch/train/worker.py), as torchrun starts it locally for
`corolla train`, which sends MLflow what the ranks write (launch/jobs/local.py): no rank imports MLflow."""

import os
import sys
from pathlib import Path

from launch.train.compat import import_training_libraries

import_training_libraries()
from launch.train.worker import EXIT_STATUS, main  # noqa: E402  (after the import above, which must come first)

status = EXIT_STATUS.get(main(Path(sys.argv[1]), sends=False), 0)
# Everything the rank writes is closed by now: the interpreter's teardown of torch, DeepSpeed and megatron (a second
# or two of each rank's end, for nothing) is skipped.
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
