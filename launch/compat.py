"""Every place corolla reaches into a library past its public interface, or around a bug of it: one module, each
workaround with the reason and the version it was written for, and `check_versions`, which every rank calls before
it trains, so that an upgrade that may break one says so in one line instead of training wrong.

Libraries are imported where a workaround needs them, so that the Slurm side (submitit's) does not pull in torch.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

# The releases the workarounds below were written and tested for: deepspeed and megatron-core exactly (private
# attributes, a bug), torch by minor version (the LR scheduler's private counters; 2.11 is the GPU machine's).
WRITTEN_FOR = {
    "deepspeed": ("0.19.8",),
    "megatron-core": ("0.16.1",),
    "torch": ("2.11", "2.12", "2.13"),
    "submitit": ("1.5.4",),
}


def _matches(installed: str, accepted: tuple[str, ...]) -> bool:
    release = installed.split("+")[0]
    return any(release == wanted or release.startswith(wanted + ".") for wanted in accepted)


def check_versions(packages: tuple[str, ...] = ("torch", "deepspeed", "megatron-core")) -> None:
    """A RuntimeError naming every installed package that is not a release the workarounds were written for."""
    wrong = []
    for package in packages:
        try:
            installed = version(package)
        except PackageNotFoundError:
            installed = "none"
        if not _matches(installed, WRITTEN_FOR[package]):
            wrong.append(f"{package} {installed} (written for {' or '.join(WRITTEN_FOR[package])})")
    if wrong:
        raise RuntimeError(
            f"corolla's library workarounds (launch/compat.py) do not know {', '.join(wrong)}: install the "
            "versions requirements.lock pins, or check each workaround there against the new release"
        )


# deepspeed 0.19.8, megatron-core 0.16.1


def quiet_library_notices(cpu_by_design: bool = False) -> None:
    """Drops what the training libraries print that tells a corolla user nothing, in every process:
    - megatron-core's warnings that Transformer Engine and Apex are not installed (corolla uses neither), a line each
      for four of its modules;
    - DeepSpeed's "untested optimizer" with ZeRO: corolla's AdamW (launch/train/engine.py) is tested with ZeRO-1, a
      resume bit-identical to an unbroken run;
    - torch's FutureWarning, from DeepSpeed's ZeRO-1 in bf16, that `all_gather_into_tensor` is deprecated;
    - megatron-core's advice, with TP, to set CUDA_DEVICE_MAX_CONNECTIONS=1: corolla sets it on GPUs
      (launch/train/device.py), and a CPU has no CUDA connections.
    `cpu_by_design` drops DeepSpeed's warning that it found no GPU too: in corolla's own process (an export, a reshard,
    on CPU whatever the machine) and in the ranks but the first of each node, whose line is the sign of a GPU node
    whose GPUs are not seen."""
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed", category=UserWarning)
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated")
    warnings.filterwarnings("ignore", message=r"When using .* environment variable CUDA_DEVICE_MAX_CONNECTIONS to 1")
    deepspeed_log = logging.getLogger("DeepSpeed")
    deepspeed_log.addFilter(_not_the_optimizer_notice)  # once: the same filter is added once
    if cpu_by_design:
        deepspeed_log.addFilter(_not_the_cpu_notice)


def _not_the_cpu_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Setting accelerator to CPU")


def _not_the_optimizer_notice(record: logging.LogRecord) -> bool:
    return "You are using ZeRO with an untested optimizer" not in record.getMessage()


@contextlib.contextmanager
def building_pipeline() -> Iterator[None]:
    """DeepSpeed's PipelineModule as corolla builds it (deepspeed/runtime/pipe/module.py):
    - without autograd: it broadcasts the tied embedding in place, which autograd would record, and then warn in every
      rank's first backward that it cannot differentiate `c10d::broadcast_` (the gradients were right all the same:
      every layout gives one process's losses and gradient norms, tests/launch/test_training.py);
    - its printouts on rank 0 (the seed settings, the topology, each stage's layers) dropped: the stage cut is the
      run's plan.json."""
    import torch

    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        yield


# On GPUs, unless set otherwise: a failed NCCL collective raises (ending the rank) instead of hanging, as BLOOM needed;
# the caching allocator grows segments instead of fragmenting across micro-batches of changing shapes; one hardware
# queue, so that megatron-core's TP all-reduce, launched before the weight-gradient matmul, runs beside it rather
# than after it (what megatron-core asks for). Read as torch's allocator and the CUDA context are made: set before any
# library that may make them is imported. Nothing reads them on CPU.
GPU_ENVIRONMENT = {
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
}


def set_gpu_environment() -> None:
    for name, value in GPU_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def import_training_libraries(first_on_node: bool = True) -> None:
    """deepspeed and megatron-core, imported for a rank without what corolla never uses: seconds of every rank's
    start. Called before anything imports them (python -m launch.train, the Slurm task); `first_on_node`: the rank
    whose line says that DeepSpeed found no GPU on its node (quiet_library_notices). GPU_ENVIRONMENT is set first.
    - `import deepspeed` imports its autotuner, which imports mlflow whenever it is installed: mlflow is hidden during
      that import only (the autotuner takes it as absent); rank 0 of a Slurm job imports it when it first sends.
    - megatron-core applies `torch.compile` to its fused activations as it defines them, which imports TorchDynamo and
      Inductor (two seconds); corolla calls none of them. During that import `torch.compile` waits for a function's
      first call, as it does anyway for its compilation: only the compiler's import moves."""
    if "deepspeed" in sys.modules or "mlflow" in sys.modules:
        return
    set_gpu_environment()
    quiet_library_notices(cpu_by_design=not first_on_node)
    sys.modules["mlflow"] = None  # type: ignore[assignment]
    try:
        import deepspeed  # noqa: F401
    finally:
        del sys.modules["mlflow"]
    import torch

    compile_now = torch.compile
    torch.compile = _compiled_at_first_call(compile_now)
    try:
        import megatron.core.tensor_parallel  # noqa: F401
    finally:
        torch.compile = compile_now


def _compiled_at_first_call(compile_now: Callable) -> Callable:
    def compile_later(function: Callable | None = None, **options: object) -> Callable:
        if function is None:  # used as @torch.compile(...)
            return lambda function: compile_later(function, **options)
        compiled = None

        @functools.wraps(function)
        def run(*args, **kwargs):
            nonlocal compiled
            if compiled is None:
                compiled = compile_now(function, **options)
            return compiled(*args, **kwargs)

        return run

    return compile_later


def skip_cpu_shm_op_build() -> None:
    """On CPU, `deepspeed.init_distributed` JIT-builds a shared-memory op for inference all-reduce (30+ s of g++) that
    training never uses. The builder is looked up in `deepspeed.comm.torch`, which the name `torch` shadows on
    attribute access: reached through sys.modules."""
    import deepspeed.comm.torch  # noqa: F401  (loads the module sys.modules holds)

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def forward_count(engine) -> int:
    """DeepSpeed's pipeline module reseeds each layer before its forward from a count of the forward passes this
    process made (`micro_offset`), so that count is part of the random state."""
    return engine.module.micro_offset


def set_forward_count(engine, count: int) -> None:
    engine.module.micro_offset = count


def report_grad_norm(optimizer, norm: float) -> None:
    """DeepSpeed's engine takes the gradient norm it reports from the optimizer's `_global_grad_norm` after a step."""
    optimizer._global_grad_norm = norm


def master_groups(engine) -> list[tuple[list, object]] | None:
    """Per parameter group, the model's parameters and the flat fp32 partition holding their masters, where
    DeepSpeed keeps the masters apart: ZeRO-1, or its bf16 optimizer without ZeRO. None where the parameters are
    their own masters (fp32 without ZeRO)."""
    optimizer = engine.optimizer
    if hasattr(optimizer, "single_partition_of_fp32_groups"):  # ZeRO
        return list(zip(optimizer.bit16_groups, optimizer.single_partition_of_fp32_groups, strict=True))
    if hasattr(optimizer, "fp32_groups_flat_partition"):  # BF16_Optimizer
        return list(zip(optimizer.bf16_groups, optimizer.fp32_groups_flat_partition, strict=True))
    return None


def adam_optimizer(engine):
    """The optimizer holding Adam's state: DeepSpeed's wrapper's inner one (over flat partitions), or the engine's."""
    return engine.optimizer.optimizer if master_groups(engine) is not None else engine.optimizer


def link_moments(engine, steps: int, moments: tuple[str, ...]) -> None:
    """Points each parameter's fp32 fragment at its slice of Adam's moments, creating them (zeros) where Adam has
    not yet: before the first step after a restore. DeepSpeed links them once, after its first parameter group's
    step, when the second group has no state yet, so the second group's parameters are never linked (0.19.8)."""
    from deepspeed.utils.mixed_precision_linkage import lazy_init_hp_params_optimizer_state

    state = adam_optimizer(engine).state
    for group, flat in master_groups(engine):
        if not state.get(flat):
            state[flat] = {"step": adam_step(steps, flat), **{key: flat.new_zeros(flat.shape) for key in moments}}
        lazy_init_hp_params_optimizer_state(group, flat, state)


# megatron-core 0.16.1


def tensor_parallel_rng_name() -> str:
    """The name megatron's tracker keeps the tensor-parallel RNG state under (no public getter)."""
    from megatron.core.tensor_parallel import random as megatron_random

    return megatron_random._MODEL_PARALLEL_RNG_TRACKER_NAME


def install_rng_tracker(tracker) -> None:
    """megatron keeps the tensor-parallel RNG tracker in module globals and offers no way to install one of another
    kind (on CPU, one of CPU generator states: launch/train/device.py)."""
    from megatron.core.tensor_parallel import random as megatron_random

    megatron_random._CUDA_RNG_STATE_TRACKER = tracker
    megatron_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def share_rng_tracker_with_deepspeed() -> None:
    """DeepSpeed's activation checkpointing keeps a tensor-parallel RNG tracker of its own, whose states it saves
    before a checkpointed layer's forward and restores for its recompute (deepspeed 0.19.8,
    runtime/activation_checkpointing/checkpointing.py); attention dropout draws from megatron's. Left apart, the
    recompute drew other dropout masks than the forward (gradients of another network) and advanced megatron's
    tracker, so that every later micro-batch's masks changed too. Megatron's tracker is made DeepSpeed's."""
    from deepspeed.runtime.activation_checkpointing import checkpointing
    from megatron.core.tensor_parallel import random as megatron_random

    checkpointing._CUDA_RNG_STATE_TRACKER = megatron_random.get_cuda_rng_tracker()


# torch 2.11-2.13


def adam_step(steps: int, parameter):
    """Adam's count of steps as torch's AdamW keeps it in a parameter's state: a float32 scalar tensor, which the
    fused kernels read on the parameter's device (the others take it on either)."""
    import torch

    return torch.tensor(float(steps), dtype=torch.float32, device=parameter.device)


def set_lr_schedule_step(scheduler, steps: int) -> None:
    """Puts a LambdaLR at step `steps`, its learning rates included. Restored from the count rather than its state
    dict, since a stage of another layout may hold another number of parameter groups (ZeRO drops a stage's empty
    group); LambdaLR has no public way to set its position."""
    scheduler.last_epoch, scheduler._step_count = steps, steps + 1
    factors = zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    scheduler._last_lr = [base * factor(scheduler.last_epoch) for base, factor in factors]
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler._last_lr, strict=True):
        group["lr"] = lr


def exit_skipping_teardown(status: int) -> NoReturn:
    """Ends a process whose writes are all closed, without the interpreter's teardown of torch, DeepSpeed and
    megatron-core: a second or two of each rank's end for nothing, and under load the threads of torch's process
    group and store can abort the process there ("terminate called without an active exception"), which Slurm then
    marks FAILED."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def torchrun() -> list[str]:
    """The command that runs torchrun (torch.distributed.run) without the ChildFailedError it raises from its main
    when a rank fails: Python printed its traceback and summary, thirty lines that name no reason, between the ranks'
    own errors and corolla's last line. Exits with torchrun's status for it, 1.
    It ends at once once its main has (os._exit, whatever is raised on the way: its parent gone, a write to its
    stderr raises): ended by a signal, torchrun's main could leave the threads that tail its ranks' output running,
    which the interpreter's exit then waited for, for ever (torch 2.13: a torchrun seen in a futex for hours, its
    ranks ended and unreaped)."""
    quiet = (
        "import contextlib, os, sys, traceback\n"
        "from torch.distributed.elastic.multiprocessing.errors import ChildFailedError\n"
        "from torch.distributed.run import main\n"
        "status = 1\n"
        "try:\n    main()\n    status = 0\n"
        "except ChildFailedError:\n    pass\n"
        "except SystemExit as exit:  # argparse's\n    status = exit.code if isinstance(exit.code, int) else 1\n"
        "except BaseException:\n    with contextlib.suppress(Exception):\n        traceback.print_exc()\n"
        "finally:  # whatever a write to a reader gone raises\n"
        "    for stream in (sys.stdout, sys.stderr):\n"
        "        with contextlib.suppress(Exception):\n            stream.flush()\n"
        "    os._exit(status)\n"
    )
    return [sys.executable, "-c", quiet]


def torch_save_cause(error: RuntimeError) -> OSError | KeyboardInterrupt | None:
    """What torch.save's own RuntimeError ("[enforce fail at inline_container.cc] unexpected pos") hides, which names
    neither the file nor the cause: the OSError of a write that failed (a full disk), or a Ctrl-C that came as the
    zip writer called back into Python."""
    return error.__context__ if isinstance(error.__context__, OSError | KeyboardInterrupt) else None


# submitit 1.5.4


def sbatch_script(executor, array_tasks: int = 1) -> str:
    """The sbatch script the executor would submit (a job array's, for several tasks); submitit writes it only as it
    submits, and adds the array's parameters only then."""
    from submitit.slurm.slurm import _make_sbatch_string

    check_versions(("submitit",))
    parameters = {**executor.parameters, **({"map_count": array_tasks} if array_tasks > 1 else {})}
    return _make_sbatch_string(command=executor._submitit_command_str, folder=executor.folder, **parameters)


class SbatchRefused(RuntimeError):
    """sbatch did not take a job submitit asked it to: its last line, without its "sbatch: error: "."""


@contextlib.contextmanager
def sbatch_refusals() -> Iterator[None]:
    """Around submitit's submissions: when sbatch fails, submitit prints its error output itself and then raises a
    FailedJobError holding the same text, so the user met sbatch's line twice, once bare and once as corolla's. Kept
    from the terminal, the printed copy is dropped and the error becomes SbatchRefused, one line (anything else
    submitit printed is passed on)."""
    from submitit.core.utils import FailedJobError

    check_versions(("submitit",))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            yield
    except FailedJobError as error:
        said = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise SbatchRefused(said[-1].removeprefix("sbatch: error: ") if said else "sbatch failed") from None
    except BaseException:
        sys.stderr.write(printed.getvalue())
        raise
    sys.stderr.write(printed.getvalue())


def requeue_with(ask: Callable[[str], Exception | None]) -> None:
    """submitit requeues a job on USR2 with its own `scontrol requeue`, run from the job's step: the requeue ends
    that step with SIGTERM, which can kill scontrol after the requeue took effect and before submitit logged it, and a
    controller that does not answer for a minute fails it; either way a CalledProcessError traceback, and the job not
    run again. `ask(job_id)` requeues it instead: None once Slurm took it, else the error, raised."""
    from submitit.core import logger
    from submitit.slurm.slurm import SlurmJobEnvironment

    check_versions(("submitit",))

    def requeue(environment: SlurmJobEnvironment, countdown: int) -> None:
        if problem := ask(environment.job_id):
            raise problem
        logger.get_logger().info(f"Requeued job {environment.job_id} ({countdown} remaining timeouts)")

    SlurmJobEnvironment._requeue = requeue


# mlflow 3, SQLAlchemy 2, safetensors (Rust)

# SQLAlchemy's first line of an error raised while it flushed, before the line that says what failed.
AUTOFLUSH_PREAMBLE = "(raised as a result of Query-invoked autoflush"


def telling_lines(error: Exception) -> list[str]:
    """The lines of an MLflow store's error that say what failed: SQLAlchemy's autoflush preamble left out."""
    return [line for line in str(error).strip().splitlines() if not line.startswith(AUTOFLUSH_PREAMBLE)]


def quiet_mlflow_store() -> None:
    """MLflow's SQL store logs a database error's whole traceback before it raises; corolla says the error in one
    line itself (launch/rundir/outbox.py)."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def rust_os_error(error: Exception) -> OSError | None:
    """The I/O error a Rust library (safetensors) raises as an exception of its own type, "... No space left on device
    (os error 28)", as the OSError it is."""
    import re

    found = re.search(r"\(os error (\d+)\)", str(error))
    return OSError(int(found[1]), str(error)) if found else None
