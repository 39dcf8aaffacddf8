"""`python -m launch.train RUN_DIR`: one training rank (launch/train/worker.py), as torchrun starts it locally for
`corolla train`, which sends MLflow what the ranks write (launch/jobs/local.py): no rank imports MLflow."""

import os
import sys
from pathlib import Path

from launch.rundir.files import STOP_FILE
from launch.train.stopping import ENDED_EXIT, StopSignals

run_dir = Path(sys.argv[1])
# First of all: a Ctrl-C while the libraries load (seconds) stops the rank at its first step boundary, with a
# checkpoint, rather than killing it halfway through an import.
stop = StopSignals(run_dir / STOP_FILE)

from launch.compat import exit_skipping_teardown, import_training_libraries  # noqa: E402

import_training_libraries(first_on_node=os.environ.get("LOCAL_RANK", "0") == "0")  # torchrun sets it
from launch.train.worker import main  # noqa: E402  (after the import above, which must come first)

exit_skipping_teardown(ENDED_EXIT.get(main(run_dir, stop=stop, sends=False), 0))
