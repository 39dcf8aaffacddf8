"""A real Slurm cluster on this machine: a controller and N compute nodes, each with its own hostname and address.

For tests, and for trying corolla without a cluster (root, after `bash scripts/setup-slurm.sh`):

    python -m slurm.testcluster start --nodes 2 --gpus-per-node 2 --cpus-per-node 2 [--accounting] [--dir DIR]
    python -m slurm.testcluster status [--dir DIR]
    python -m slurm.testcluster stop [--dir DIR]

Each compute node nX is a network namespace on a bridge; its slurmd runs in private UTS and mount namespaces with
hostname nX and a hosts file naming every node bind-mounted over /etc/hosts, so job processes on different nodes
reach each other by hostname. The host is HOST_ADDRESS on the bridge: slurmctld and slurmdbd listen there, so Slurm
commands run on the host with SLURM_CONF set, and jobs reach a server on the host at that address (127.0.0.1 inside
a node is the node's own loopback). GPUs are GRES backed by character devices, so Slurm sets CUDA_VISIBLE_DEVICES.
munge, MariaDB and every daemon keep their files in the cluster's directory, and their state across restarts.
One cluster runs on a machine at a time: the bridge, the namespaces and the ports are machine-wide.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

SUBNET = "10.77.0"
HOST_ADDRESS = f"{SUBNET}.1"
CONTROLLER_HOSTNAME = "ctl"
BRIDGE = "corolla-br0"
NAMESPACE_PREFIX = "corolla-"
NETNS_DIR = Path("/run/netns")
# Which directory's cluster holds the machine-wide bridge, namespaces and ports.
OWNER_RECORD = Path("/run/corolla-testcluster")
DEFAULT_DIRECTORY = Path("/tmp/corolla-testcluster")
CLUSTER_NAME = "corolla"
PARTITION = "debug"
# Not Slurm's default ports, so that a Slurm installed on the machine keeps its own.
CONTROLLER_PORT, NODE_PORT, ACCOUNTING_PORT, DATABASE_PORT = 16817, 16818, 16819, 16820
SYSTEM_DIRS = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
SETUP_HINT = "run bash scripts/setup-slurm.sh"
# Durability is worthless here, and fsync makes MariaDB's first start 15 times slower.
DATABASE_OPTIONS = [
    "--no-defaults",
    "--user=root",
    "--innodb-log-file-size=8M",
    "--innodb-buffer-pool-size=16M",
    "--sync-frm=0",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--innodb-flush-method=nosync",
]

SLURM_CONF = """\
ClusterName={cluster}
SlurmctldHost={controller}({host})
SlurmctldPort={controller_port}
SlurmdPort={node_port}
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default ~120 s).
AuthInfo=socket={munge_socket},cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={controller_dir}/state
SlurmctldPidFile={controller_dir}/slurmctld.pid
SlurmctldLogFile={controller_dir}/slurmctld.log
SlurmdSpoolDir={node_dir}/spool
SlurmdPidFile={node_dir}/slurmd.pid
SlurmdLogFile={node_dir}/slurmd.log
# The nodes share the machine's processes and cores: nothing to confine, and the configured CPUs count.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
SlurmdTimeout=10
SlurmctldTimeout=10
MessageTimeout=5
KillWait=5
MinJobAge=600
JobRequeue=1
# A crashed node whose slurmd comes back returns to service by itself.
ReturnToService=1
{accounting}
{nodes}
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

ACCOUNTING = """\
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost={host}
AccountingStoragePort={accounting_port}
# slurmctld's connection to slurmdbd takes the munge socket from here, not from AuthInfo.
AccountingStoragePass={munge_socket}"""

SLURMDBD_CONF = """\
AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost=localhost
DbdPort={accounting_port}
SlurmUser=root
PidFile={database_dir}/slurmdbd.pid
LogFile={database_dir}/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={database_port}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
"""

DATABASE_INIT = """\
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
"""


class ClusterError(RuntimeError):
    """A cluster that cannot start or be reached, said in one line."""


@dataclass(frozen=True)
class ClusterSpec:
    """What the cluster is made of; start() restarts a running cluster that was made of something else."""

    nodes: int = 2
    gpus_per_node: int = 2
    cpus_per_node: int = 2
    accounting: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 200:
            raise ClusterError(f"nodes must be between 1 and 200, not {self.nodes}")
        if self.gpus_per_node < 0 or self.cpus_per_node < 1:
            raise ClusterError("gpus_per_node must be >= 0 and cpus_per_node >= 1")

    @property
    def node_names(self) -> list[str]:
        return [f"n{index}" for index in range(1, self.nodes + 1)]


def node_address(name: str) -> str:
    return f"{SUBNET}.{10 + int(name.removeprefix('n'))}"


def search_path() -> str:
    """PATH with the system folders added (Slurm's daemons live in sbin, often not on a user's PATH)."""
    folders = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(folders + [folder for folder in SYSTEM_DIRS if folder not in folders])


def find_program(name: str) -> str | None:
    return shutil.which(name, path=search_path())


def require_program(name: str) -> str:
    path = find_program(name)
    if path is None:
        raise ClusterError(f"{name} not installed: {SETUP_HINT}")
    return path


def require_root() -> None:
    if os.geteuid() != 0:
        raise ClusterError("the test cluster needs root (network namespaces, daemons, munge as its own user)")


def process_name(pid: int) -> str | None:
    """The kernel's name of a live process (`comm`), None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
    return None if state == "Z" else name


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def accepts_connections(address: str | Path, port: int | None = None) -> bool:
    family = socket.AF_UNIX if port is None else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(address) if port is None else (str(address), port))
        except OSError:
            return False
    return True


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def last_line_of_files(*files: Path) -> str:
    return last_line("\n".join(file.read_text(errors="replace") for file in files if file.exists()))


@dataclass(frozen=True)
class Daemon:
    """One daemon, known by its pid file: whoever started it, any process can stop it."""

    program: str
    pid_file: Path
    log_file: Path

    @property
    def output_file(self) -> Path:
        """What the daemon printed before its log file was open."""
        return self.pid_file.with_suffix(".out")

    def recorded_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pid(self) -> int | None:
        """The daemon's pid while it runs."""
        pid = self.recorded_pid()
        if pid is None:
            return None
        executable = find_program(self.program)
        # Debian's slurmd is a link to slurmd-wlm; a pid file left by a crash may name a pid reused since.
        names = {self.program, Path(os.path.realpath(executable)).name if executable else self.program}
        return pid if process_name(pid) in {name[:15] for name in names} else None

    def running(self) -> bool:
        return self.pid() is not None

    def stop(self, grace: float) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            # slurmd ignores SIGTERM while it retries to reach a controller that is gone.
            if not wait_for(lambda: process_name(pid) is None, grace):
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: process_name(pid) is None, 5)
        self.pid_file.unlink(missing_ok=True)

    def failure(self) -> str:
        return f"{self.program} did not start: {last_line_of_files(self.output_file, self.log_file)} ({self.log_file})"


@dataclass(frozen=True)
class ClusterFiles:
    """Where everything of one cluster lives, under its directory."""

    directory: Path

    @property
    def spec(self) -> Path:
        return self.directory / "cluster.json"

    @property
    def slurm_conf(self) -> Path:
        return self.directory / "slurm.conf"

    @property
    def hosts(self) -> Path:
        return self.directory / "hosts"

    @property
    def munge(self) -> Path:
        return self.directory / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge / "munge.socket"

    @property
    def database(self) -> Path:
        return self.directory / "database"

    @property
    def controller(self) -> Path:
        return self.directory / "controller"

    def node(self, name: str) -> Path:
        return self.directory / "nodes" / name

    def node_names(self) -> list[str]:
        """Every node that has files here, from this start or an earlier one."""
        return sorted(path.name for path in (self.directory / "nodes").glob("n*"))

    def munged(self) -> Daemon:
        return Daemon("munged", self.munge / "munged.pid", self.munge / "munged.log")

    def mariadbd(self) -> Daemon:
        return Daemon("mariadbd", self.database / "mariadbd.pid", self.database / "mariadbd.log")

    def slurmdbd(self) -> Daemon:
        return Daemon("slurmdbd", self.database / "slurmdbd.pid", self.database / "slurmdbd.log")

    def slurmctld(self) -> Daemon:
        return Daemon("slurmctld", self.controller / "slurmctld.pid", self.controller / "slurmctld.log")

    def slurmd(self, name: str) -> Daemon:
        return Daemon("slurmd", self.node(name) / "slurmd.pid", self.node(name) / "slurmd.log")


def recorded_spec(files: ClusterFiles) -> ClusterSpec | None:
    """The spec of the last start in this directory."""
    return ClusterSpec(**json.loads(files.spec.read_text())) if files.spec.exists() else None


def conf_values(files: ClusterFiles) -> dict[str, object]:
    return {
        "cluster": CLUSTER_NAME,
        "partition": PARTITION,
        "controller": CONTROLLER_HOSTNAME,
        "host": HOST_ADDRESS,
        "controller_port": CONTROLLER_PORT,
        "node_port": NODE_PORT,
        "accounting_port": ACCOUNTING_PORT,
        "database_port": DATABASE_PORT,
        "munge_socket": files.munge_socket,
        "controller_dir": files.controller,
        "database_dir": files.database,
        "node_dir": files.node("%n"),  # slurmd puts its node name in for %n
    }


def slurm_conf(spec: ClusterSpec, files: ClusterFiles) -> str:
    values = conf_values(files)
    accounting = ACCOUNTING.format(**values) if spec.accounting else "AccountingStorageType=accounting_storage/none"
    gres = f" Gres=gpu:{spec.gpus_per_node}" if spec.gpus_per_node else ""
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    nodes = "\n".join(
        f"NodeName={name} NodeAddr={node_address(name)} CPUs={spec.cpus_per_node} RealMemory={memory_mb}{gres}"
        for name in spec.node_names
    )
    return SLURM_CONF.format(**values, accounting=accounting, nodes=nodes)


def gres_conf(spec: ClusterSpec, files: ClusterFiles) -> str:
    if not spec.gpus_per_node:
        return ""
    return "".join(
        f"NodeName={name} Name=gpu File={files.node(name)}/dev/nvidia[0-{spec.gpus_per_node - 1}]\n"
        for name in spec.node_names
    )


def hosts_file(spec: ClusterSpec) -> str:
    names = [("127.0.0.1", "localhost"), (HOST_ADDRESS, CONTROLLER_HOSTNAME)]
    names += [(node_address(name), name) for name in spec.node_names]
    return "".join(f"{address}\t{name}\n" for address, name in names)


def run_command(command: list[str], output: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Runs a setup command; a daemon it leaves behind must not hold a pipe of ours, so output goes to a file."""
    with (output or Path(os.devnull)).open("ab") as sink:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env, timeout=120
        )
    if result.returncode != 0:
        detail = last_line_of_files(output) if output else f"exit status {result.returncode}"
        raise ClusterError(f"{' '.join(command[:4])} failed: {detail}")


def ip(*arguments: str) -> None:
    run_command([require_program("ip"), *arguments])


def namespace_path(name: str) -> Path:
    return NETNS_DIR / f"{NAMESPACE_PREFIX}{name}"


def our_namespaces() -> list[Path]:
    return sorted(NETNS_DIR.glob(f"{NAMESPACE_PREFIX}*")) if NETNS_DIR.exists() else []


def processes_in_namespace(namespace: Path) -> list[int]:
    try:
        target = namespace.stat()
    except OSError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            found = (entry / "ns" / "net").stat() if entry.name.isdigit() else None
        except OSError:
            continue
        if found and (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry.name))
    return pids


def kill_namespace(namespace: Path) -> None:
    """SIGKILLs every process in a network namespace: a node's slurmd, its slurmstepds and the jobs' tasks."""
    pids = processes_in_namespace(namespace)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: all(process_name(pid) is None for pid in pids), 5)


def create_network(spec: ClusterSpec) -> None:
    ip("link", "add", BRIDGE, "type", "bridge")
    ip("addr", "add", f"{HOST_ADDRESS}/24", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")
    for name in spec.node_names:
        namespace = namespace_path(name).name
        ip("netns", "add", namespace)
        ip("link", "add", namespace, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("-n", namespace, "addr", "add", f"{node_address(name)}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("link", "set", namespace, "master", BRIDGE, "up")


def remove_network() -> None:
    for namespace in our_namespaces():
        kill_namespace(namespace)
        ip("netns", "delete", namespace.name)
    if Path("/sys/class/net", BRIDGE).exists():
        ip("link", "delete", BRIDGE)
    # A namespace's veth pair normally goes with it, but the host end was seen to outlive it here: remove it too.
    for link in Path("/sys/class/net").glob(f"{NAMESPACE_PREFIX}*"):
        with contextlib.suppress(ClusterError):  # it may go with its namespace meanwhile
            ip("link", "delete", link.name)


def check_prerequisites(spec: ClusterSpec) -> None:
    require_root()
    programs = ["slurmctld", "slurmd", "munged", "sbatch", "sinfo", "ip", "nsenter", "unshare", "setpriv", "setsid"]
    if spec.accounting:
        programs += ["slurmdbd", "mariadbd", "mariadb-install-db", "sacct"]
    for program in programs:
        require_program(program)


@dataclass
class TestCluster:
    """A Slurm cluster on this machine, kept in `directory`; start() and stop() are idempotent."""

    __test__: ClassVar[bool] = False  # a name pytest would otherwise collect
    host_address: ClassVar[str] = HOST_ADDRESS

    directory: Path = DEFAULT_DIRECTORY
    spec: ClusterSpec = field(default_factory=ClusterSpec)
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).absolute()

    @classmethod
    def from_directory(cls, directory: Path) -> TestCluster:
        """The cluster last started in `directory` (the default spec when none was)."""
        return cls(directory, recorded_spec(ClusterFiles(Path(directory).absolute())) or ClusterSpec())

    @property
    def files(self) -> ClusterFiles:
        return ClusterFiles(self.directory)

    @property
    def node_names(self) -> list[str]:
        return self.spec.node_names

    @property
    def slurm_conf(self) -> Path:
        return self.files.slurm_conf

    @property
    def env(self) -> dict[str, str]:
        """Variables that let a process on the host (sbatch, squeue, sacct, submitit) use this cluster."""
        return {"SLURM_CONF": str(self.files.slurm_conf), "PATH": search_path()}

    def node_address(self, name: str) -> str:
        return node_address(name)

    def __enter__(self) -> TestCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def daemons(self) -> dict[str, Daemon]:
        daemons = {"munged": self.files.munged()}
        if self.spec.accounting:
            daemons |= {"mariadbd": self.files.mariadbd(), "slurmdbd": self.files.slurmdbd()}
        daemons["slurmctld"] = self.files.slurmctld()
        return daemons | {f"slurmd@{name}": self.files.slurmd(name) for name in self.node_names}

    def status(self) -> dict[str, int | None]:
        """Each daemon's pid, None for one that is not running."""
        return {name: daemon.pid() for name, daemon in self.daemons().items()}

    def is_running(self) -> bool:
        return recorded_spec(self.files) == self.spec and all(pid is not None for pid in self.status().values())

    def start(self) -> TestCluster:
        """Starts the cluster and waits until every node is up; a no-op when it already runs as specified."""
        check_prerequisites(self.spec)
        if self.is_running():
            self.wait_ready()
            return self
        self._take_over_machine()
        self.stop()  # what a crash or a start with another spec left here
        try:
            self._start_everything()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops every daemon and job of this directory and removes the network; a no-op when nothing runs."""
        require_root()
        for name in self.files.node_names():
            self.files.slurmd(name).stop(grace=1)
            kill_namespace(namespace_path(name))
        self.files.slurmctld().stop(grace=10)
        self.files.slurmdbd().stop(grace=5)
        self.files.mariadbd().stop(grace=15)
        self.files.munged().stop(grace=2)
        if machine_owner() in (None, self.directory):
            remove_network()
            OWNER_RECORD.unlink(missing_ok=True)

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Runs a command (sbatch, squeue, ...) on the host against this cluster; its output as text."""
        result = subprocess.run(
            command, env=os.environ | self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise ClusterError(f"{' '.join(command)} failed: {last_line(result.stderr or result.stdout)}")
        return result

    def node_states(self) -> dict[str, str]:
        """Each node's state as sinfo prints it: idle, alloc, mix, down* ('*': not responding)..."""
        words = self.run("sinfo", "--noheader", "--Node", "--format=%N %t").stdout.split()
        return dict(zip(words[::2], words[1::2], strict=True))

    def wait_node_state(self, name: str, states: set[str], timeout: float = 60) -> str:
        """Waits until node `name` is in one of `states` (as node_states() says them); returns that state."""
        if not wait_for(lambda: self.node_states().get(name) in states, timeout, interval=0.2):
            raise ClusterError(
                f"node {name} is {self.node_states().get(name)}, not {sorted(states)}, after {timeout} s"
            )
        return self.node_states()[name]

    def wait_ready(self, timeout: float | None = None) -> None:
        """Waits until every node responds, idle or running jobs."""
        for name in self.node_names:
            self.wait_node_state(name, {"idle", "mix", "alloc", "comp"}, timeout or self.start_timeout)

    def wait_idle(self, timeout: float = 60) -> None:
        """Waits until every node is idle: no job left on it."""
        for name in self.node_names:
            self.wait_node_state(name, {"idle"}, timeout)

    def kill_node(self, name: str) -> None:
        """A node failure: cuts the node's network, then SIGKILLs its slurmd, slurmstepds and job processes.

        The network goes first so that, as on a crashed machine, no peer sees its connections close: srun on
        other nodes keeps waiting, and the controller declares the node down after SlurmdTimeout (~15 s).
        """
        self._check_node(name)
        ip("link", "set", namespace_path(name).name, "down")
        kill_namespace(namespace_path(name))

    def restart_node(self, name: str) -> None:
        """Brings a node back (after kill_node): its network, then a fresh slurmd; the controller resumes it."""
        self._check_node(name)
        kill_namespace(namespace_path(name))
        ip("link", "set", namespace_path(name).name, "up")
        self._start_node(name)

    def stop_controller(self) -> None:
        """slurmctld gone (a crash, a restart, a login node cut off from it): every client fails to contact it. Jobs
        on the nodes go on; start_controller brings it back with its saved state."""
        self.files.slurmctld().stop(grace=10)

    def start_controller(self) -> None:
        self._start_controller()

    def _check_node(self, name: str) -> None:
        if name not in self.node_names:
            raise ClusterError(f"no node {name!r}: the nodes are {', '.join(self.node_names)}")

    def _take_over_machine(self) -> None:
        owner = machine_owner()
        if owner is None or owner == self.directory:
            return
        other = TestCluster.from_directory(owner)
        if any(pid is not None for pid in other.status().values()):
            raise ClusterError(
                f"a test cluster from {owner} is running: python -m slurm.testcluster stop --dir {owner}"
            )
        other.stop()  # what a crash left of it: namespaces, bridge

    def _start_everything(self) -> None:
        self._write_files()
        OWNER_RECORD.write_text(f"{self.directory}\n")
        create_network(self.spec)
        self._start_munge()
        if self.spec.accounting:
            self._start_database()
            self._start_accounting()
        self._start_controller()
        for name in self.node_names:
            self._start_node(name)
        self._cancel_recovered_jobs()
        self._resume_drained_nodes()
        self.wait_ready()

    def _cancel_recovered_jobs(self) -> None:
        """Jobs in the state of an earlier start are gone from the nodes: a start begins with an empty queue.

        (Job ids go on from the saved state, so sacct's history stays unambiguous.) An srun allocation would
        otherwise stay running forever, its srun gone.
        """
        jobs = self.run("squeue", "--noheader", "--format=%A").stdout.split()
        if jobs:
            self.run("scancel", *jobs, check=False)

    def _resume_drained_nodes(self) -> None:
        """Nodes drained in the state of an earlier start (`scontrol update state=drain`) would stay out of service,
        and the start would wait for them in vain: a start begins with every node in service."""
        drained = [name for name, state in self.node_states().items() if state.rstrip("*") in ("drain", "drng")]
        if drained:
            self.run("scontrol", "update", f"nodename={','.join(drained)}", "state=resume")

    def _write_files(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # munged runs as the munge user, which must reach its folder inside this one.
        self.directory.chmod(0o755)
        closed = [parent for parent in self.directory.parents if not parent.stat().st_mode & 0o001]
        if closed:
            raise ClusterError(f"{closed[0]} is closed to other users (munge): choose a directory outside it")
        files = self.files
        files.spec.write_text(json.dumps(asdict(self.spec)) + "\n")
        files.slurm_conf.write_text(slurm_conf(self.spec, files))
        files.slurm_conf.with_name("gres.conf").write_text(gres_conf(self.spec, files))
        files.hosts.write_text(hosts_file(self.spec))
        files.controller.mkdir(exist_ok=True)
        for name in self.node_names:
            (files.node(name) / "spool").mkdir(parents=True, exist_ok=True)
            self._make_gpus(name)

    def _make_gpus(self, name: str) -> None:
        devices = self.files.node(name) / "dev"
        devices.mkdir(exist_ok=True)
        for index in range(self.spec.gpus_per_node):
            device = devices / f"nvidia{index}"
            if not device.exists():
                os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a character device like /dev/null

    def _start_munge(self) -> None:
        munge, daemon = self.files.munge, self.files.munged()
        munge.mkdir(mode=0o755, exist_ok=True)
        key = munge / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for path in [munge, *munge.iterdir()]:
            shutil.chown(path, "munge", "munge")
        munged = [require_program("munged"), f"--key-file={key}", f"--socket={self.files.munge_socket}"]
        munged += [f"--pid-file={daemon.pid_file}", f"--log-file={daemon.log_file}", f"--seed-file={munge / 'seed'}"]
        as_munge = [require_program("setpriv"), "--reuid=munge", "--regid=munge", "--init-groups"]
        run_command(as_munge + munged, daemon.output_file)
        self._wait_started(daemon, lambda: accepts_connections(self.files.munge_socket))

    def _start_database(self) -> None:
        database, daemon = self.files.database, self.files.mariadbd()
        data = database / "data"
        database.mkdir(exist_ok=True)
        if not (data / "mysql").exists():
            shutil.rmtree(data, ignore_errors=True)
            install = [require_program("mariadb-install-db"), *DATABASE_OPTIONS, f"--datadir={data}", "--skip-test-db"]
            run_command(install, database / "install.out")
        init = database / "init.sql"
        init.write_text(DATABASE_INIT)
        server = [require_program("mariadbd"), *DATABASE_OPTIONS, f"--datadir={data}", f"--init-file={init}"]
        server += ["--skip-name-resolve", "--bind-address=127.0.0.1", f"--port={DATABASE_PORT}"]
        server += [f"--socket={database / 'mariadbd.sock'}", f"--pid-file={daemon.pid_file}"]
        server += [f"--log-error={daemon.log_file}"]
        run_command([require_program("setsid"), "--fork", *server], daemon.output_file)  # mariadbd stays in front
        self._wait_started(daemon, lambda: accepts_connections("127.0.0.1", DATABASE_PORT))

    def _start_accounting(self) -> None:
        daemon = self.files.slurmdbd()
        conf = self.files.directory / "slurmdbd.conf"
        conf.write_text(SLURMDBD_CONF.format(**conf_values(self.files)))
        conf.chmod(0o600)
        # slurmdbd has no option for its configuration file: it reads slurmdbd.conf beside SLURM_CONF.
        run_command([require_program("slurmdbd")], daemon.output_file, self._daemon_env())
        self._wait_started(daemon, lambda: accepts_connections("127.0.0.1", ACCOUNTING_PORT))

    def _start_controller(self) -> None:
        daemon = self.files.slurmctld()
        # slurmctld refuses to run on a host whose name is not SlurmctldHost's: give it a hostname of its own.
        script = f"hostname {CONTROLLER_HOSTNAME} && exec {require_program('slurmctld')} -f {self.files.slurm_conf}"
        run_command([require_program("unshare"), "--uts", "sh", "-c", script], daemon.output_file, self._daemon_env())
        self._wait_started(daemon, lambda: self.run("scontrol", "ping", check=False).returncode == 0, interval=0.2)

    def _start_node(self, name: str) -> None:
        daemon = self.files.slurmd(name)
        daemon.pid_file.unlink(missing_ok=True)
        slurmd = f"{require_program('slurmd')} -f {self.files.slurm_conf}"
        script = f"hostname {name} && mount --bind {self.files.hosts} /etc/hosts && exec {slurmd}"
        # `ip netns exec` would remount /sys, where slurmd 22.05 then fails to set up its cgroup plugin.
        enter = [require_program("nsenter"), f"--net={namespace_path(name)}"]
        unshare = [require_program("unshare"), "--uts", "--mount", "--propagation=slave"]
        run_command([*enter, *unshare, "sh", "-c", script], daemon.output_file, self._daemon_env())
        self._wait_started(daemon, daemon.running)

    def _daemon_env(self) -> dict[str, str]:
        return os.environ | self.env

    def _wait_started(self, daemon: Daemon, ready: Callable[[], bool], interval: float = 0.05) -> None:
        def started() -> bool:
            if daemon.recorded_pid() is not None and not daemon.running():
                raise ClusterError(daemon.failure())  # it wrote its pid file, then died
            return ready() and daemon.running()

        if not wait_for(started, self.start_timeout, interval):
            raise ClusterError(daemon.failure())


@contextlib.contextmanager
def temporary_cluster(spec: ClusterSpec) -> Iterator[TestCluster]:
    """A cluster in a fresh directory, running inside the `with` block; the directory is removed after."""
    # Not in pytest's tmp_path, which is closed to other users: munged runs as the munge user.
    directory = Path(tempfile.mkdtemp(prefix="corolla-slurm-"))
    cluster = TestCluster(directory, spec)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
    shutil.rmtree(directory)


def machine_owner() -> Path | None:
    """The directory of the cluster that holds this machine's bridge and namespaces, if any."""
    return Path(OWNER_RECORD.read_text().strip()) if OWNER_RECORD.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slurm.testcluster", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a cluster (a no-op when it already runs); prints SLURM_CONF")
    start.add_argument("--nodes", type=int, default=2)
    start.add_argument("--gpus-per-node", type=int, default=2)
    start.add_argument("--cpus-per-node", type=int, default=2)
    start.add_argument("--accounting", action="store_true", help="slurmdbd + MariaDB, so that sacct works")
    commands.add_parser("stop", help="stop every daemon and job, remove the network")
    commands.add_parser("status", help="the daemons and the nodes")
    for command in commands.choices.values():
        command.add_argument("--dir", type=Path, default=DEFAULT_DIRECTORY, help=f"default: {DEFAULT_DIRECTORY}")
    arguments = parser.parse_args(argv)
    try:
        run_cli(arguments)
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def run_cli(arguments: argparse.Namespace) -> None:
    if arguments.command == "start":
        spec = ClusterSpec(arguments.nodes, arguments.gpus_per_node, arguments.cpus_per_node, arguments.accounting)
        began = time.monotonic()
        cluster = TestCluster(arguments.dir, spec).start()
        print(f"cluster up in {time.monotonic() - began:.1f} s: nodes {', '.join(cluster.node_names)}", file=sys.stderr)
        print(f"export SLURM_CONF={cluster.slurm_conf}")
        return
    cluster = TestCluster.from_directory(arguments.dir)
    if arguments.command == "stop":
        cluster.stop()
        return
    for name, pid in cluster.status().items():
        print(f"{name:<12} {f'running, pid {pid}' if pid else 'stopped'}")
    if cluster.files.slurmctld().running():
        print(cluster.run("sinfo", "--Node", "--long", check=False).stdout, end="")


if __name__ == "__main__":
    sys.exit(main())
