"""A run's job as written into its run directory (the resolved TrainJob, as YAML) and read back.

`job_config` reads it as it stands, for readers that must cope with a job written by hand or by an older corolla
(`corolla status`); `read_job` makes it the typed, validated TrainJob again (the ranks, export, resharding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from launch.config.schemas import TrainJob
from tokenizer.files import first_line

HINT = "restore it from MLflow (the run's job.yaml artifact)"


def job_yaml(job: TrainJob) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(job))


def job_settings(job: TrainJob) -> dict[str, str]:
    """The job's every setting by its dotted name (`data.alpha`), as text: its MLflow params."""
    return _flattened(OmegaConf.to_container(OmegaConf.structured(job), enum_to_str=True))


def changed_settings(before: TrainJob, after: TrainJob) -> dict[str, tuple[str, str]]:
    """The settings `after` gives otherwise than `before`, with both values ("" for one that only one of them has: a
    language's data.weights given or dropped)."""
    old, new = job_settings(before), job_settings(after)
    names = [*new, *(name for name in old if name not in new)]
    return {name: (old.get(name, ""), new.get(name, "")) for name in names if old.get(name) != new.get(name)}


def changes_text(changed: Mapping[str, Sequence[str]]) -> str:
    """changed_settings' (or its record's) as a line says them: `data.seed 1234 -> 7, data.weights.fra_Latn 2.0 ->
    unset`."""
    return ", ".join(f"{name} {old or 'unset'} -> {new or 'unset'}" for name, (old, new) in changed.items())


def _flattened(config: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flattened(value, name + "."))
        else:
            flat[name] = str(value)
    return flat


def job_config(path: Path) -> DictConfig:
    """The job file as written; a ValueError naming it when it is not one."""
    try:
        job = OmegaConf.load(path)
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path} cannot be read ({first_line(error)}): {HINT}") from None
    if not isinstance(job, DictConfig):
        raise ValueError(f"{path} is not a corolla job: {HINT}")
    return job


def read_job(path: Path, schema: type[TrainJob] = TrainJob) -> TrainJob:
    written = job_config(path)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), written))
    except (OmegaConfBaseException, ValueError) as error:
        raise ValueError(f"{path} is not a valid job ({first_line(error)}): {HINT}") from None


def section(job: DictConfig, key: str, schema: type):
    """One section of a job file as its typed config, schema defaults for what it leaves out."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), job.get(key) or {}))
