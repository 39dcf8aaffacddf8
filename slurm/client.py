"""What Slurm says of a job: scontrol while the controller knows it, sacct once it has ended (and the controller may
have forgotten it)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from slurm.commands import SlurmError, run_slurm

# Job states after which Slurm will not run the job again by itself (a requeued job is PENDING, not one of these).
ENDED_STATES = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REVOKED",
    "TIMEOUT",
}


def controller_record(job_id: str) -> dict[str, str] | None:
    """`scontrol show job` as a dict, None when the controller no longer knows the job (ended > MinJobAge ago)."""
    try:
        output = run_slurm("scontrol", "show", "job", job_id)
    except SlurmError as error:
        if "Invalid job id" in str(error):
            return None
        raise
    record = scontrol_fields(output)
    if "JobId" not in record or "JobState" not in record:  # no state to act on: an answer, not a record
        said = output.strip().splitlines()[0][:80] if output.strip() else "nothing"
        raise SlurmError(f"scontrol show job {job_id} answered no record of the job ({said})")
    return record


def scontrol_fields(output: str) -> dict[str, str]:
    """`scontrol show`'s Key=Value fields. A value runs to the next field's key, a capitalised word (Socks/Node,
    NtasksPerN:B:S:C): a path with a space (StdOut=/x/my runs/lr=3e-4/...) is one value."""
    fields = (field.partition("=") for field in re.split(r"\s+(?=[A-Z][\w:]*(?:/[A-Z]\w*)?=)", output.strip()))
    return {key: value for key, separator, value in fields if separator}


def accounting_record(job_id: str) -> dict[str, str] | None:
    """sacct's record of the job's allocation (its latest run when it was requeued), None when sacct lacks it."""
    names = ["State", "ExitCode", "Elapsed", "Start", "End", "NodeList"]
    output = run_slurm("sacct", "-j", job_id, "-X", "-n", "-P", "-o", ",".join(names))
    lines = output.strip().splitlines()
    return dict(zip(names, lines[-1].split("|"), strict=False)) if lines else None


def was_cancelled(job_id: str) -> bool:
    """Whether Slurm's accounting says the job was cancelled (scancel): a SIGTERM that is not a preemption, which the
    job must not answer with a requeue. The controller hides it (a cancelled job ending is COMPLETING there); False
    where sacct cannot say."""
    try:
        record = accounting_record(job_id)
    except SlurmError:
        return False
    return record is not None and record["State"].startswith("CANCELLED")


def partition_nodes() -> dict[str, set[str]]:
    """Every partition's nodes by name, hidden ones too (a user may be let use one), Slurm's default partition
    first (where a job that names none goes; sinfo marks it `*`), then in sinfo's order; a SlurmError when Slurm
    cannot be asked."""
    nodes: dict[str, set[str]] = {}
    output = run_slurm("sinfo", "--all", "--noheader", "--Node", "--format=%P %N")
    lines = [line.split() for line in output.splitlines()]
    for partition, node in sorted(lines, key=lambda line: not line[0].endswith("*")):
        nodes.setdefault(partition.removesuffix("*"), set()).add(node)
    return nodes


# sinfo's short node states (%t, without the marks * ~ # ! % $ @ ^ -) of a node that takes no job until an admin
# resumes it (drained, draining, failed) or its slurmd comes back (down).
OUT_OF_SERVICE = {"down", "drain", "drng", "fail", "failg", "inval"}


def out_of_service(partition: str) -> dict[str, str]:
    """The partition's nodes that take no job, each with its state and why, as sinfo says them ("drain: maintenance");
    a SlurmError when Slurm cannot be asked."""
    output = run_slurm("sinfo", "--noheader", "--Node", f"--partition={partition}", "--format=%N|%t|%E")
    nodes = {}
    for node, state, reason in (line.split("|", 2) for line in output.splitlines() if line.count("|") >= 2):
        if state.rstrip("*~#!%$@^-") in OUT_OF_SERVICE:
            nodes[node] = f"{state}: {reason}" if reason.strip() not in ("", "none") else state
    return nodes


def partition_limits(partition: str) -> tuple[str, int | None]:
    """Whether the partition takes jobs (sinfo's word: up, down, drain, inact) and its time limit in minutes (None:
    none); a SlurmError when Slurm cannot be asked."""
    output = run_slurm("sinfo", "--noheader", f"--partition={partition}", "--format=%a %l")
    available, limit = output.split()[:2]
    return available, _minutes(limit)


def _minutes(limit: str) -> int | None:
    """A Slurm time limit ("infinite", "days-hours:minutes:seconds", "hours:minutes:seconds", "minutes:seconds",
    "minutes") in whole minutes, or None."""
    if not limit[:1].isdigit():
        return None
    days, _, clock = limit.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    hours, minutes, _ = [0] * (3 - len(parts)) + parts if len(parts) > 1 else (0, parts[0], 0)
    return (int(days or 0) * 24 + hours) * 60 + minutes


def has_ended(state: str) -> bool:
    return state.split()[0] in ENDED_STATES if state else False


# A pending job's reasons (scontrol's) that mean nodes it needs take no job: drained, down, failed.
NODES_OUT_REASONS = ("ReqNodeNotAvail", "Nodes_required_for_job_are_DOWN")


@dataclass(frozen=True)
class SlurmState:
    job_id: str
    state: str  # as Slurm says it: RUNNING, PENDING, "CANCELLED by 0", ...
    live: bool  # queued or running: scancel applies
    summary: str  # the rest, in words
    source: str  # scontrol, sacct, or why neither answered
    reason: str = ""  # why a live job waits, as scontrol says it (Dependency, Resources, ReqNodeNotAvail, ...)
    partition: str = ""  # a live job's
    output: str = ""  # where the job writes its output (scontrol's StdOut), while the controller knows it

    @property
    def waits_for_another(self) -> bool:
        return self.live and self.reason == "Dependency"

    @property
    def waits_for_nodes_out(self) -> bool:
        """Pending on nodes that take no job until an admin resumes them (or, down, until they come back)."""
        return self.state == "PENDING" and self.reason.startswith(NODES_OUT_REASONS)


def slurm_state(job_id: str) -> SlurmState:
    """What Slurm says of the job; a SlurmError when the controller cannot be asked."""
    record = controller_record(job_id)
    output = record.get("StdOut", "") if record is not None else ""
    if record is not None and not has_ended(record["JobState"]):
        reason, partition = record.get("Reason", ""), record.get("Partition", "")
        return SlurmState(job_id, record["JobState"], True, live_summary(record), "scontrol", reason, partition, output)
    try:
        accounted = accounting_record(job_id)
        sacct_problem = "" if accounted else "sacct has no record of it"
    except SlurmError as error:
        accounted, sacct_problem = None, f"sacct unavailable ({error})"
    # Accounting lags the controller by a moment: a job just ended can still be RUNNING there.
    if accounted is not None and (has_ended(accounted["State"]) or record is None):
        return SlurmState(job_id, accounted["State"], False, accounted_summary(accounted), "sacct", output=output)
    if record is not None:
        source = f"scontrol; {sacct_problem}" if sacct_problem else "scontrol; sacct has not caught up"
        return SlurmState(job_id, record["JobState"], False, ended_summary(record), source, output=output)
    return SlurmState(job_id, "UNKNOWN", False, "the controller no longer knows the job", f"scontrol; {sacct_problem}")


def latest_states(jobs: list[str]) -> list[SlurmState]:
    """What Slurm says of a run's latest jobs, newest first: only they can be live, an elastic run's running job and
    the next one, queued behind it."""
    return [slurm_state(job_id) for job_id in reversed(jobs[-2:])]


def live_summary(record: dict[str, str]) -> str:
    parts = []
    if record.get("NodeList") not in (None, "", "(null)"):
        parts.append(f"on {record['NodeList']}")
    if record.get("Reason") not in (None, "", "None"):
        parts.append(f"reason {record['Reason'].replace('_', ' ')}")  # scontrol's words joined by _
    parts.append(f"run time {record.get('RunTime', '?')} of {record.get('TimeLimit', '?')}")
    parts.append(f"restarts {record.get('Restarts', '?')}")
    return ", ".join(parts)


def ended_summary(record: dict[str, str]) -> str:
    return (
        f"exit code {record.get('ExitCode', '?')}, ran {record.get('RunTime', '?')} on {record.get('NodeList', '?')}, "
        f"ended {record.get('EndTime', '?')}, restarts {record.get('Restarts', '?')}"
    )


def accounted_summary(record: dict[str, str]) -> str:
    return (
        f"exit code {record['ExitCode']}, ran {record['Elapsed']} on {record['NodeList']}, "
        f"started {record['Start']}, ended {record['End']}"
    )
