"""The loss's cost: corolla's fused vocabulary-parallel cross-entropy (model/fused.py) against megatron-core's, forward
and backward over one micro-batch's logits, in one run; the two losses and gradients compared.

    .venv/bin/python benchmarks/loss_kernel.py [--micro-batch 2] [--seq-length 2048] [--vocab 64000] [--dtype bf16]
                                               [--compiled]

Prints, for each, the time of a forward and backward (the median, after one that compiles) and the memory it takes
beyond the logits (a fresh copy of them included, as the output projection makes them), and corolla's ratios to
megatron's. Memory: on a GPU, CUDA's peak allocated; on CPU, the peak resident memory of a fresh process per loss
(glibc told to unmap large blocks when freed, so that resident memory follows the live tensors). Without --compiled
(on CPU) the fused loss runs its arithmetic eagerly, which training never does: it shows why eager training runs
megatron's. benchmarks/gpu_check.py compares the two on a GPU, compiled, on a bloom-1b7 micro-batch's logits
(4 x 2,048 x 250,880).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from megatron.core import parallel_state  # noqa: E402
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy as megatron_cross_entropy  # noqa: E402

from model.fused import fused_cross_entropy  # noqa: E402

LOSSES = ("megatron", "corolla")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def loss_of(name: str, logits: torch.Tensor, labels: torch.Tensor, compiled: bool) -> torch.Tensor:
    """The mean loss over a copy of the logits, fresh as the output projection's in training: megatron's works on
    fp32 logits in place."""
    fresh = logits.clone()
    if name == "megatron":
        return megatron_cross_entropy(fresh.float(), labels).mean()
    return fused_cross_entropy(fresh, labels, compiled).mean()


def inputs(rows: tuple[int, int], vocab: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Logits [micro-batch, sequence, vocabulary] and labels."""
    generator = torch.Generator(device=device).manual_seed(5)
    logits = torch.randn(*rows, vocab, generator=generator, device=device).mul_(3).to(dtype).requires_grad_()
    return logits, torch.randint(0, vocab, rows, generator=generator, device=device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resident_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (the peak since the last reset) of this process."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def reset_peak(device: torch.device) -> int:
    """Starts measuring the peak from here; returns what is held now (beyond it the peak counts)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS
    return resident_bytes("VmRSS")


def peak_since(device: torch.device, held: int) -> int:
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else resident_bytes("VmHWM")
    return peak - held


def forward_and_backward(name: str, logits: torch.Tensor, labels: torch.Tensor, compiled: bool) -> float:
    logits.grad = None
    synchronize(logits.device)
    start = time.perf_counter()
    loss_of(name, logits, labels, compiled).backward()
    synchronize(logits.device)
    return time.perf_counter() - start


def measure(name: str, logits: torch.Tensor, labels: torch.Tensor, compiled: bool, repeats: int) -> dict:
    """Seconds of a forward and backward (the median, after one that compiles), and the peak bytes beyond the logits
    and labels (CUDA's allocator; on CPU, resident memory, which the compiler's own memory then counts in)."""
    forward_and_backward(name, logits, labels, compiled)
    logits.grad = None
    held = reset_peak(logits.device)
    seconds = [forward_and_backward(name, logits, labels, compiled) for _ in range(repeats)]
    peak = peak_since(logits.device, held)
    return {"ms": round(1e3 * statistics.median(seconds), 2), "peak_gib": round(peak / 1024**3, 3)}


def differences(logits: torch.Tensor, labels: torch.Tensor, compiled: bool) -> dict:
    """Max |difference| between the two losses, and between their gradients (in the logits' dtype: an fp32 copy of
    BLOOM-sized gradients would take 16 GB more)."""
    results = {}
    for name in LOSSES:
        logits.grad = None
        loss = loss_of(name, logits, labels, compiled)
        loss.backward()
        results[name] = (loss.detach(), logits.grad)
    (loss, gradient), (expected, expected_gradient) = results["corolla"], results["megatron"]
    return {"loss": (loss - expected).abs().item(), "gradient": (gradient - expected_gradient).abs().max().item()}


def compare(
    rows: tuple[int, int], vocab: int, dtype: torch.dtype, device: torch.device, compiled: bool, repeats: int
) -> dict:
    """Both losses in this process (on CPU its resident memory is the first's peak for both: main() measures each
    in a process of its own)."""
    logits, labels = inputs(rows, vocab, dtype, device)
    report = {name: measure(name, logits, labels, compiled, repeats) for name in LOSSES}
    return with_ratios({**report, "max_difference": differences(logits, labels, compiled)})


def with_ratios(report: dict) -> dict:
    ours, theirs = report["corolla"], report["megatron"]
    report["time_ratio"] = round(ours["ms"] / theirs["ms"], 3)
    report["memory_ratio"] = round(ours["peak_gib"] / theirs["peak_gib"], 3) if theirs["peak_gib"] else None
    return report


def one_process(name: str, arguments: argparse.Namespace) -> dict:
    """One loss measured in a fresh process, for its peak resident memory."""
    command = [sys.executable, __file__, "--only", name, *argv_of(arguments)]
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def argv_of(arguments: argparse.Namespace) -> list[str]:
    shape = ["--micro-batch", str(arguments.micro_batch), "--seq-length", str(arguments.seq_length)]
    flags = [*shape, "--vocab", str(arguments.vocab), "--dtype", arguments.dtype, "--repeats", str(arguments.repeats)]
    return [*flags, *(["--compiled"] if arguments.compiled else [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=64000)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument(
        "--compiled", action="store_true", help="the fused loss compiled (as training runs it; on a GPU it always is)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=LOSSES, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    compiled = arguments.compiled or device.type == "cuda"
    dtype, rows = DTYPES[arguments.dtype], (arguments.micro_batch, arguments.seq_length)
    # On CPU each loss first runs in a process of its own, for its resident memory; then both here, compared.
    alone = (
        {name: one_process(name, arguments) for name in LOSSES} if device.type == "cpu" and not arguments.only else {}
    )
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"})
    os.environ.setdefault("MASTER_PORT", "29547")
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)
    if arguments.only:
        logits, labels = inputs(rows, arguments.vocab, dtype, device)
        print(json.dumps(measure(arguments.only, logits, labels, compiled, arguments.repeats)))
        return
    report = with_ratios({**compare(rows, arguments.vocab, dtype, device, compiled, arguments.repeats), **alone})
    shape = {"logits": "x".join(map(str, (*rows, arguments.vocab))), "dtype": arguments.dtype, "compiled": compiled}
    print(json.dumps({"device": str(device), **shape, **report}, indent=1))


if __name__ == "__main__":
    main()
