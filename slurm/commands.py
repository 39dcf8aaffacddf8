"""The one way corolla runs a Slurm command (sinfo, squeue, scontrol, sacct, scancel): with a timeout, and a
SlurmError saying in one line which command failed and what it said. (submitit runs sbatch itself.)"""

from __future__ import annotations

import subprocess
import sys
import time

TIMEOUT_S = 30
HINT = "run this on a login node of the cluster"  # what mends a Slurm command that cannot be run here
# What Slurm's commands say when the controller is down, restarting or overloaded: they run, and it does not answer.
# (scontrol's job updates, requeue, release, hold, say "Unexpected message received" then.)
UNREACHABLE = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "did not answer within",
    "Unexpected message received",
)
UNREACHABLE_HINT = "Slurm's controller does not answer: run the command again once `sinfo` does, or ask the admins"
# Inside a job, when a rank crashes, Slurm ends the step with SIGTERM to every process in it just as its peers ask for
# a requeue, and a request cut off halfway is lost (SIGKILL follows only after KillWait, seconds later).
SURVIVE_SIGTERM = ["sh", "-c", 'trap "" TERM; exec "$@"', "slurm-command"]
# A job that ends before its controller takes its requeue is not run again, so the request is asked again while the
# controller does not answer: a restart or a failover takes minutes; the job's nodes are of no use to another meanwhile.
REQUEUE_RETRY_S = 5
REQUEUE_PATIENCE_S = 3600


class SlurmError(RuntimeError):
    """A Slurm command that is missing, timed out or failed; the message names it and what it said."""

    @property
    def hint(self) -> str:
        """What mends it: a login node where the command cannot be run here, patience where the controller is down."""
        return UNREACHABLE_HINT if any(words in str(self) for words in UNREACHABLE) else HINT


def run_slurm(*command: str, survive_sigterm: bool = False) -> str:
    """The command's output; `survive_sigterm` for requests sent from inside a job's step."""
    argv = [*SURVIVE_SIGTERM, *command] if survive_sigterm else list(command)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise SlurmError(f"{command[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{command[0]} did not answer within {TIMEOUT_S} s") from None
    if result.returncode == 127 and survive_sigterm:  # the shell did not find it
        raise SlurmError(f"{command[0]} not found")
    if result.returncode:
        said = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        raise SlurmError(f"{command[0]}: {said[-1] if said else f'exit status {result.returncode}'}")
    return result.stdout


def request(*command: str) -> bool:
    """A request from inside a job (requeue it, cancel the run's next job): whether Slurm took it. A refusal is not
    an error there: another rank may have asked first."""
    try:
        run_slurm(*command, survive_sigterm=True)
    except SlurmError:
        return False
    return True


def requeue(job_id: str, patience_s: float = REQUEUE_PATIENCE_S) -> SlurmError | None:
    """Asks Slurm, from inside the job, to run it again; while the controller does not answer, every REQUEUE_RETRY_S
    for up to `patience_s` (said on stderr the first time). None once Slurm took it, else what Slurm last said (a
    refusal: another rank may have asked first)."""
    deadline = time.monotonic() + patience_s
    waiting = False
    while True:
        try:
            run_slurm("scontrol", "requeue", job_id, survive_sigterm=True)
            return None
        except SlurmError as error:
            if error.hint != UNREACHABLE_HINT or time.monotonic() >= deadline:
                return error
            if not waiting:
                print(
                    f"corolla: the requeue of job {job_id} is not taken ({error}): asking again every "
                    f"{REQUEUE_RETRY_S} s for up to {patience_s / 60:.0f} min",
                    file=sys.stderr,
                    flush=True,
                )
                waiting = True
        time.sleep(REQUEUE_RETRY_S)
