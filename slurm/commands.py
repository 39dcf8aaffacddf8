"""The one way corolla runs a Slurm command (sinfo, squeue, scontrol, sacct, scancel): with a timeout, and a
SlurmError saying in one line which command failed and what it said. (submitit runs sbatch itself.)"""

from __future__ import annotations

import subprocess

TIMEOUT_S = 30
HINT = "run this on a login node of the cluster"  # what mends a Slurm command that cannot be run here
# What Slurm's commands say when the controller is down, restarting or overloaded: they run, and it does not answer.
UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "did not answer within")
UNREACHABLE_HINT = "Slurm's controller does not answer: run the command again once `sinfo` does, or ask the admins"
# Inside a job, when a rank crashes, Slurm ends the step with SIGTERM to every process in it just as its peers ask for
# a requeue, and a request cut off halfway is lost (SIGKILL follows only after KillWait, seconds later).
SURVIVE_SIGTERM = ["sh", "-c", 'trap "" TERM; exec "$@"', "slurm-command"]


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
