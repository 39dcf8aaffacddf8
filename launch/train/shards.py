"""A checkpoint's weights and Adam moments by parameter name, in files that any TP x PP x DP layout can read.

The first data-parallel rank of each (tensor, pipeline) rank pair writes one file: for every parameter of its
pipeline stage, its tensor-parallel slice of the fp32 master weight and of both Adam moments, whole over data
parallelism (ZeRO-1's partitions are gathered first). Names are the pipeline module's, which number layers
globally, so a stage of another layout finds its parameters by name; a slice for another TP width is cut from the
slices joined along the dimension tensor parallelism splits (`model.layers.tp_split_dim`). Nothing is recomputed or
rounded, so a run resumed on another layout continues from exactly the numbers it stopped with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from deepspeed.utils import (
    safe_get_full_fp32_param,
    safe_get_full_optimizer_state,
    safe_set_full_fp32_param,
    safe_set_full_optimizer_state,
)
from megatron.core import parallel_state

from launch import compat
from launch.plan.arithmetic import CHECKPOINT_BYTES_PER_PARAMETER
from launch.plan.layout import ParallelLayout
from launch.rundir.files import shard_file
from launch.train.hashed_save import save_hashed
from model.layers import EMBEDDING, tp_split_dim

MOMENTS = ("exp_avg", "exp_avg_sq")
KEYS = ("weight", *MOMENTS)


class ShardError(ValueError):
    """Shards that do not fit the model being restored; the message says which and why."""


def shard_files(layout: ParallelLayout) -> list[str]:
    return [shard_file(t, layout.tp, p, layout.pp) for p in range(layout.pp) for t in range(layout.tp)]


def adam_steps(engine) -> int:
    states = list(compat.adam_optimizer(engine).state.values())
    return int(states[0]["step"]) if states else 0


def _parameter_state(engine, parameter: torch.nn.Parameter) -> dict[str, torch.Tensor]:
    if compat.master_groups(engine) is not None:  # collectives over the DP group: every DP rank, in the same order
        values = {"weight": safe_get_full_fp32_param(parameter)}
        values.update({key: safe_get_full_optimizer_state(parameter, key) for key in MOMENTS})
    else:
        state = engine.optimizer.state[parameter]
        values = {"weight": parameter.detach(), **{key: state[key] for key in MOMENTS}}
    return {key: value.detach().float().cpu().clone() for key, value in values.items()}


def write(engine, directory: Path, layout: ParallelLayout) -> dict[str, str]:
    """Called by every rank; the first DP rank of each TP x PP pair writes its file. The SHA-256 of what this rank
    wrote, by file name."""
    if compat.master_groups(engine) is not None:
        compat.link_moments(engine, adam_steps(engine), MOMENTS)
    writes = parallel_state.get_data_parallel_rank() == 0
    states = {}
    for name, parameter in engine.module.named_parameters():
        values = _parameter_state(engine, parameter)  # gathered on every DP rank, kept on the one that writes
        if writes:
            states[name] = values
    if not writes:
        return {}
    tp_rank, pp_rank = (
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_pipeline_model_parallel_rank(),
    )
    name = shard_file(tp_rank, layout.tp, pp_rank, layout.pp)
    return {name: save_hashed(states, directory / name)}


def bytes_to_write(engine) -> int:
    """What `write` writes on this rank, about: 4 bytes of fp32 for each of KEYS of each of its parameters on the
    first DP rank of each TP x PP pair, nothing on the others."""
    if parallel_state.get_data_parallel_rank() != 0:
        return 0
    return CHECKPOINT_BYTES_PER_PARAMETER * sum(parameter.numel() for parameter in engine.module.parameters())


class ShardReader:
    """The shards a checkpoint's layout wrote, memory-mapped: only the slices asked for are read."""

    def __init__(self, directory: Path, layout: ParallelLayout) -> None:
        self.layout = layout
        self.files = {
            (t, p): torch.load(
                directory / shard_file(t, layout.tp, p, layout.pp), mmap=True, weights_only=True, map_location="cpu"
            )
            for p in range(layout.pp)
            for t in range(layout.tp)
        }
        self.stage_of = {name: p for (t, p), states in self.files.items() if t == 0 for name in states}

    def names(self) -> Iterator[str]:
        return iter(self.stage_of)

    def _slices(self, name: str, key: str, stage: int | None = None) -> list[torch.Tensor]:
        """The TP slices of `name`, from `stage`'s files where they hold it (the tied embedding is on two stages,
        whose copies may differ in the last bits after DP reductions in different buckets), else its first."""
        if name not in self.stage_of:
            raise ShardError(f"the checkpoint has no parameter {name}: it was saved from another model shape")
        if stage is None or name not in self.files.get((0, stage), {}):
            stage = self.stage_of[name]
        return [self.files[(t, stage)][name][key] for t in range(self.layout.tp)]

    def full(self, name: str, key: str = "weight") -> torch.Tensor:
        slices, dim = self._slices(name, key), tp_split_dim(name)
        return slices[0] if dim is None else torch.cat(slices, dim)

    def full_size(self, name: str, dim: int) -> int:
        """The whole parameter's extent along `dim`, without reading it."""
        slices = self._slices(name, "weight")
        return sum(piece.shape[dim] for piece in slices) if tp_split_dim(name) == dim else slices[0].shape[dim]

    def local(self, name: str, key: str, tp: int, tp_rank: int, stage: int | None = None) -> torch.Tensor:
        """Rank `tp_rank`'s slice under tensor parallelism `tp`; from `stage`'s files where they hold it."""
        dim = tp_split_dim(name)
        if dim is None:
            return self._slices(name, key, stage)[0]
        slices = self._slices(name, key, stage)
        if tp == self.layout.tp:
            return slices[tp_rank]
        total = sum(piece.shape[dim] for piece in slices)
        if total % tp:
            raise ShardError(f"{name} has {total} rows or columns, which TP={tp} cannot split evenly")
        return self.span(name, key, tp_rank * total // tp, (tp_rank + 1) * total // tp, stage)

    def span(self, name: str, key: str, start: int, stop: int, stage: int | None = None) -> torch.Tensor:
        """Rows or columns [start, stop) of the whole parameter along the dimension TP splits. Only the old slices
        that overlap them are read (they are memory-mapped), not the whole tensor."""
        dim = tp_split_dim(name)
        slices = self._slices(name, key, stage)
        width, pieces = slices[0].shape[dim], []
        for index, piece in enumerate(slices):
            low, high = max(start, index * width), min(stop, (index + 1) * width)
            if low < high:
                pieces.append(piece.narrow(dim, low - index * width, high - low))
        return torch.cat(pieces, dim)


def _set_weight(name: str, parameter: torch.nn.Parameter, weight: torch.Tensor, masters: bool) -> None:
    if weight.shape != parameter.shape:
        raise ShardError(
            f"{name} is {tuple(weight.shape)} in the checkpoint but {tuple(parameter.shape)} here: the model shape "
            "or the embedding's rows differ (a vocabulary is padded to 128 x TP, an imported embedding keeps its rows)"
        )
    with torch.no_grad():
        parameter.copy_(weight)
    if masters:
        safe_set_full_fp32_param(parameter, weight)


def _this_rank() -> tuple[int, int, int]:
    """This rank's TP width, TP rank and pipeline depth."""
    return (
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_pipeline_model_parallel_world_size(),
    )


def restore(engine, reader: ShardReader, steps: int) -> None:
    """Sets this rank's weights (model and fp32 master) and Adam moments from `reader`; `steps` is Adam's count."""
    tp, tp_rank, pp = _this_rank()
    own_stage = parallel_state.get_pipeline_model_parallel_rank() if pp == reader.layout.pp else None
    masters = compat.master_groups(engine) is not None
    if masters:
        compat.link_moments(engine, steps, MOMENTS)
    for name, parameter in engine.module.named_parameters():
        values = {key: reader.local(name, key, tp, tp_rank, own_stage) for key in KEYS}
        _set_weight(name, parameter, values["weight"], masters)
        if masters:
            for key in MOMENTS:
                safe_set_full_optimizer_state(parameter, values[key], key)
        else:
            moments = {key: values[key].to(parameter.device).clone() for key in MOMENTS}
            engine.optimizer.state[parameter] = {"step": compat.adam_step(steps, parameter), **moments}


@dataclass(frozen=True)
class EmbeddingGrowth:
    """A vocabulary grown from `base_vocab` ids (`corolla tokenizer extend`): the rows of the base ids are the
    checkpoint's; each added id's row is the mean of the rows of its pieces under the base tokenizer (`rows`), or,
    with `rows` None, drawn as a fresh model's are; padding rows are drawn too."""

    base_vocab: int
    rows: dict[int, list[int]] | None


def _grown_embedding(reader: ShardReader, name: str, fresh: torch.Tensor, growth: EmbeddingGrowth) -> torch.Tensor:
    """This rank's slice of the grown embedding; `fresh` is the slice as the engine drew it."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    start = tp_rank * fresh.shape[0]
    grown = fresh.detach().float().cpu().clone()
    kept = min(growth.base_vocab, start + fresh.shape[0]) - start
    if kept > 0:
        grown[:kept] = reader.span(name, "weight", start, start + kept)
    for index, pieces in (growth.rows or {}).items():
        if start <= index < start + fresh.shape[0]:
            grown[index - start] = torch.stack([reader.span(name, "weight", row, row + 1)[0] for row in pieces]).mean(0)
    return grown


def restore_weights(engine, reader: ShardReader, growth: EmbeddingGrowth | None = None) -> None:
    """Sets this rank's weights (model and fp32 master) from `reader` and nothing else: the optimizer starts afresh.
    With `growth`, the word embedding grows from the checkpoint's."""
    tp, tp_rank, _ = _this_rank()
    masters = compat.master_groups(engine) is not None
    for name, parameter in engine.module.named_parameters():
        if growth and name.endswith(EMBEDDING):
            weight = _grown_embedding(reader, name, parameter, growth)
        else:
            weight = reader.local(name, "weight", tp, tp_rank)
        _set_weight(name, parameter, weight, masters)
