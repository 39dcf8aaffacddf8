"""`corolla`: one command, subcommands that each take Hydra overrides (`key=value`, `group=option`)."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from launch import compat
from launch.config.compose import ConfigError, compose_job, quoted, shown_config, sweep_points
from launch.train.stopping import ERROR_PREFIX
from tokenizer.files import NO_SPACE, first_line, is_no_space, no_room, written_for


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    config: str
    target: str  # "module:function", imported when the command runs: training pulls in DeepSpeed, the rest need not
    help: str
    flags: tuple[tuple[str, str], ...] = ()  # boolean options (name, help), passed to the target as keyword arguments
    sweep_target: str | None = None  # with --multirun: "module:function" taking every point's job at once
    positional: str | None = None  # the key a first argument that is a path sets: `corolla status RUN_DIR`

    def overrides(self, arguments: list[str]) -> list[str]:
        if self.positional and arguments and _is_path(arguments[0]):
            return [f"{self.positional}={quoted(arguments[0])}", *arguments[1:]]
        return arguments

    def run(self, job: object, **flags: bool) -> None:
        _function(self.target)(job, **flags)

    def sweep(self, overrides: list[str]) -> list[tuple[DictConfig, object]]:
        """The resolved config and job of each point of the sweep, each in its own run directory under the run_dir
        given."""
        points = []
        for name, former, point in sweep_points(self.config, overrides):
            cfg, job = compose_job(self.config, point)
            run_dir = Path(job.run_dir) / name
            if not run_dir.exists() and (Path(job.run_dir) / former).is_dir():  # an older corolla's: resumed there
                run_dir = Path(job.run_dir) / former
            cfg.run_dir = str(run_dir)
            points.append((cfg, replace(job, run_dir=cfg.run_dir)))
        return points

    def run_sweep(self, jobs: list[object], **flags: bool) -> None:
        _function(self.sweep_target)(jobs, **flags)


def _is_path(argument: str) -> bool:
    """A path rather than an override: no `=`, a `/` before the first one (no key has one: a sweep's run directory,
    runs/sweep/train.lr=0.001), or a directory that exists."""
    return "=" not in argument or "/" in argument.split("=", 1)[0] or Path(argument).is_dir()


def _function(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


COMMANDS = [
    Command(
        ("tokenizer", "train"), "tokenizer_train", "tokenizer.commands:train", "train a balanced multilingual tokenizer"
    ),
    Command(("tokenizer", "evaluate"), "tokenizer_evaluate", "tokenizer.commands:evaluate", "premiums, fertility, ..."),
    Command(
        ("tokenizer", "extend"),
        "tokenizer_extend",
        "tokenizer.commands:extend",
        "append pieces for the languages a tokenizer serves badly",
    ),
    Command(
        ("tokenizer", "encode"), "tokenizer_encode", "tokenizer.commands:encode", "corpus to per-language token files"
    ),
    Command(
        ("train",),
        "train",
        "launch.commands:train",
        "train a BLOOM model, 3D-parallel, here",
        flags=(("dry_run", "check and plan the job, and stop: no data built, no process started"),),
    ),
    Command(
        ("submit",),
        "submit",
        "launch.commands:submit",
        "train on a Slurm cluster",
        flags=(
            ("dry_run", "check, plan and print the sbatch script, and stop: the cluster is not asked, no data built"),
        ),
        sweep_target="slurm.submit:submit_sweep",
    ),
    Command(
        ("status",),
        "status",
        "launch.commands:show_status",
        "a run's state, restarts, progress, ETA",
        positional="run_dir",
    ),
    Command(
        ("logs",),
        "logs",
        "launch.commands:show_logs",
        "the last lines of every rank's log, of a run sent to Slurm",
        positional="run_dir",
    ),
    Command(("cancel",), "cancel", "launch.commands:cancel", "cancel a run's Slurm jobs", positional="run_dir"),
    Command(
        ("export", "hf"),
        "export_hf",
        "launch.train.export:export_hf_model",
        "a checkpoint as a HF BloomForCausalLM",
        positional="run_dir",
    ),
    Command(
        ("import", "hf"),
        "import_hf",
        "launch.train.import_hf:import_hf_model",
        "a HF BloomForCausalLM as a run directory at step 0, for init_from",
    ),
    Command(
        ("pipeline",),
        "pipeline",
        "launch.commands:pipeline",
        "every stage, here or as a chain of Slurm jobs (cluster=NAME); sample data by default",
        flags=(
            (
                "dry_run",
                "check config and layout, say what would run (on a cluster, each job's sbatch script); build nothing",
            ),
        ),
    ),
    Command(
        ("checkpoint", "verify"),
        "checkpoint_verify",
        "launch.commands:verify_checkpoints",
        "every checkpoint file against its hash",
        positional="run_dir",
    ),
    Command(
        ("tracking", "sync"),
        "tracking_sync",
        "launch.commands:sync_tracking",
        "send MLflow what it lacks of a run",
        positional="run_dir",
    ),
    Command(
        ("checkpoint", "reshard"),
        "checkpoint_reshard",
        "launch.commands:reshard",
        "a checkpoint for another TP x PP",
        positional="run_dir",
    ),
    Command(
        ("plan",),
        "plan",
        "launch.plan.report:show_plan",
        "layouts that fit the GPUs, ranked by speed",
        flags=(("json", "every configuration weighed, with its memory and time, as JSON"),),
    ),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corolla", description="Multilingual BLOOM training on HPC clusters.")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="command", required=True)
    }
    for command in COMMANDS:
        for depth in range(1, len(command.path)):
            prefix = command.path[:depth]
            if prefix not in groups:
                group = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{prefix[-1]} commands")
                groups[prefix] = group.add_subparsers(dest="_".join(prefix), required=True)
        sub = groups[command.path[:-1]].add_parser(command.path[-1], help=command.help, description=command.help)
        sub.add_argument("--cfg", action="store_true", help="print the resolved config and exit")
        for flag, text in command.flags:
            sub.add_argument(f"--{flag.replace('_', '-')}", action="store_true", help=text)
        if command.sweep_target:
            sub.add_argument("-m", "--multirun", action="store_true", help="a job per point of key=a,b sweeps")
        sub.add_argument("overrides", nargs="*", help="Hydra overrides: key=value, group=option")
        sub.set_defaults(command_spec=command)
    return parser


def _options_last(argv: list[str]) -> list[str]:
    """`corolla train model=x --dry-run run_dir=y`: every option is a switch and no override starts with "-", so the
    options may come anywhere among the overrides."""
    return [arg for arg in argv if not arg.startswith("-")] + [arg for arg in argv if arg.startswith("-")]


# What an OSError from the filesystem means for a path the user gave, and what to do (errno's words say neither).
FILESYSTEM_ERRORS = {
    errno.EEXIST: "{path} exists where corolla needs a directory of its own: remove it, or give another path",
    errno.ENOTDIR: "{path} is, or lies under, a file rather than a directory: give a directory's path",
    errno.EROFS: "{path} is on a read-only filesystem: give a path where corolla can write",
    errno.EACCES: "{path} cannot be accessed by this user (permissions): change them, or give another path",
    errno.EPERM: "{path} cannot be accessed by this user (permissions): change them, or give another path",
    **{
        number: no_room(number, "the filesystem of {path}") + ": free some, or give a path on another one"
        for number in NO_SPACE
    },
}


# What corolla says in one line; any other exception is a bug, shown with its traceback.
SAID = (ConfigError, ValueError, OSError, RuntimeError)


def _said(error: Exception) -> Exception | None:
    """`error` as one line can say it, or None: corolla's errors and the filesystem's, and the I/O error that a Rust
    library (safetensors) gives as an exception of its own, "... No space left on device (os error 28)"."""
    return error if isinstance(error, SAID) else compat.rust_os_error(error)


def _error_line(error: Exception) -> str:
    if isinstance(error, OSError) and error.errno in FILESYSTEM_ERRORS:
        # A copy or a rename names the file it writes second (shutil.copy2's error names the source first).
        if path := error.filename2 or error.filename:
            return FILESYSTEM_ERRORS[error.errno].format(path=written_for(str(path)))
        if is_no_space(error):  # a write() or close() names no file: the paths the command was given say where
            full = no_room(error.errno, "a filesystem this command writes to")
            return f"{full}: free some there, or give its output paths on another one"
    return first_line(error)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_options_last(sys.argv[1:] if argv is None else argv))
    command: Command = args.command_spec
    compat.quiet_library_notices(cpu_by_design=True)
    with _terminated_as_interrupted():
        return _run(command, args)


@contextmanager
def _terminated_as_interrupted() -> Iterator[None]:
    """SIGTERM stops a command as Ctrl-C does, its clean-up run (staging areas, locks), rather than where it stands."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _run(command: Command, args: argparse.Namespace) -> int:
    try:
        flags = {flag: getattr(args, flag) for flag, _ in command.flags}
        overrides = command.overrides(args.overrides)
        if getattr(args, "multirun", False):
            points = command.sweep(overrides)
            if args.cfg:  # each point's config, as one YAML document each
                print("---\n".join(OmegaConf.to_yaml(cfg) for cfg, _ in points), end="")
                return 0
            command.run_sweep([job for _, job in points], **flags)
            return 0
        if args.cfg:
            print(OmegaConf.to_yaml(shown_config(command.config, overrides)), end="")
            return 0
        command.run(compose_job(command.config, overrides)[1], **flags)
    except Exception as error:
        if isinstance(error, BrokenPipeError) and _reader_gone():  # `corolla plan --json | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
            return 128 + signal.SIGPIPE  # as a command that does not catch the signal ends
        said = _said(error)
        if said is None or os.environ.get("COROLLA_DEBUG"):
            raise
        print(f"{ERROR_PREFIX}{_error_line(said)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("corolla: interrupted: run the same command again to go on", file=sys.stderr)
        return 130
    return 0


def _reader_gone() -> bool:
    """The reader of standard output went (a pipe to `head` closed): nothing said there is read any more."""
    poller = select.poll()
    poller.register(sys.stdout.fileno(), select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


if __name__ == "__main__":
    sys.exit(main())
