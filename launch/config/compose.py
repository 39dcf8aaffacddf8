"""From command-line overrides to a validated, typed job config: the only place that talks to Hydra.

Every command's schema is a dataclass registered in Hydra's ConfigStore; `conf/` holds the primary configs and
the option groups (tokenizer, model, parallel, train, data, tracking, cluster, experiment). Composition errors and
invalid values become one `ConfigError` line naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from launch.config.cluster import SLURM_SETTINGS, Scheduler
from launch.config.schemas import (
    JOB_MODEL_SETTINGS,
    CancelJob,
    ExportJob,
    ImportJob,
    LogsJob,
    MainJob,
    PlanJob,
    ReshardJob,
    StatusJob,
    TrackingSyncJob,
    TrainJob,
    VerifyJob,
)
from tokenizer.config import (
    EXTEND_READS,
    SAMPLING_KNOBS,
    Sampling,
    TokenizerEncodeJob,
    TokenizerEvaluateJob,
    TokenizerExtendJob,
    TokenizerTrainJob,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
SCHEMAS: dict[str, type] = {
    "tokenizer_train": TokenizerTrainJob,
    "tokenizer_evaluate": TokenizerEvaluateJob,
    "tokenizer_encode": TokenizerEncodeJob,
    "tokenizer_extend": TokenizerExtendJob,
    "pipeline": MainJob,
    "train": TrainJob,
    "submit": TrainJob,
    "status": StatusJob,
    "logs": LogsJob,
    "cancel": CancelJob,
    "export_hf": ExportJob,
    "import_hf": ImportJob,
    "checkpoint_reshard": ReshardJob,
    "checkpoint_verify": VerifyJob,
    "tracking_sync": TrackingSyncJob,
    "plan": PlanJob,
}


class ConfigError(ValueError):
    """An invalid command line or config; the message is one line."""


def shared_data_dir() -> Path:
    """`../shared/data` beside the repository, unless COROLLA_SHARED_DATA points elsewhere."""
    return Path(os.environ.get("COROLLA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def _register() -> None:
    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(name=f"{name}_schema", node=schema)
    if not OmegaConf.has_resolver("sample_data"):
        OmegaConf.register_new_resolver("sample_data", lambda sub: str(shared_data_dir() / sub))


def _messages(error: BaseException) -> list[str]:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines + (_messages(error.__cause__) if error.__cause__ is not None else [])


# The commands whose jobs a sweep (`key=a,b`) can run, and how: training, on a Slurm cluster.
SWEEPS = {
    "submit": "sweep it with `corolla submit --multirun`",
    "train": "sweep it on Slurm with `corolla submit --multirun`",
}


def _one_line(error: Exception, command: str = "") -> str:
    """Hydra and OmegaConf explain over several lines; say what is wrong with which key and how to fix it (in
    `command`'s terms)."""
    lines = [line for line in _messages(error) if not re.match(r"(full_key|object_type|reference_type)\b", line)]
    text = "\n".join(lines)
    if (match := re.search(r"To append to your config use (\+.+)$", text, re.M)) and "is not in struct" in text:
        return f"{match[1][1:].split('=')[0]} takes new keys: write '{match[1]}'"
    if match := re.search(r"Key '([^']+)' not in '(\w+)'", text):
        where = re.search(r"Could not override '([^']+)'", text)
        key = where[1] if where else match[1]
        return f"unknown config key '{key}': check the spelling, `--cfg` prints every valid key"
    if match := re.search(r"Ambiguous value for argument '([^=']+)=([^']*)'", text):
        key, value = match[1], match[2]
        forms = [
            f"a list {key}=[{value}]",
            f"a string {key}='{value}'",
            *([SWEEPS[command]] if command in SWEEPS else []),
        ]
        return f"{key}={value} holds a comma: give {', '.join(forms[:-1])} or {forms[-1]}"
    if match := re.search(r"Could not find '([^']+)/([^']*)'", text):
        options = ", ".join(_available_options(lines)) or "the files in conf/"
        return f"unknown {match[1]} option '{match[2]}': choose one of {options}"
    if match := re.search(r"Error merging override (\S+)", text):
        reason = next((line for line in lines[1:] if "Error merging" not in line), "")
        key, _, value = match[1].partition("=")
        if "is not a ListConfig" in reason:
            return f"{key} takes a list: write {key}=[{value}]"
        if "'dict'" in reason and "." in key:  # `tokenizer.vocab_size=` where `tokenizer` is a path, or `seed.x=`
            parent = key.rsplit(".", 1)[0]
            return (
                f"{parent} is a single value in this command, with no {key}: drop it (`--cfg` prints every valid key)"
            )
        return f"invalid value in {match[1]}: {reason}"
    return "; ".join(dict.fromkeys(lines)) or type(error).__name__


def _available_options(lines: list[str]) -> list[str]:
    """The options Hydra lists under "Available options" when a group's option is not found."""
    start = next((index for index, line in enumerate(lines) if line.startswith("Available")), None)
    if start is None:
        return []
    return [line for line in lines[start + 1 :] if not line.startswith(("Config search path", "provider="))]


def pasted(key: str, value: str) -> str:
    """`key=value` to paste into a shell, which Hydra reads back: quoted for Hydra where the value holds more than
    letters, digits and `_./-`, and then for the shell."""
    plain = re.fullmatch(r"[\w./-]+", value, re.ASCII)
    return shlex.quote(f"{key}={value if plain else quoted(value)}")


def quoted(value: str) -> str:
    """A value as a Hydra override writes it, whatever characters it holds (a path with spaces, quotes, `=`)."""
    value = re.sub(r"(\\*)'", lambda match: match[1] * 2 + "\\'", value)
    return "'" + re.sub(r"(\\+)$", lambda match: match[1] * 2, value) + "'"


def sweep_points(command: str, overrides: list[str]) -> list[tuple[str, str, list[str]]]:
    """Hydra's multirun: every combination of the sweep overrides (`key=a,b`, `key=range(1,3)`, `group=glob(*)`), each
    as a name made of its swept values in key order (for a run directory), the name an older corolla gave it (in the
    command line's order), and its overrides."""
    try:
        with _initialized(command):
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            parsed = parser.parse_overrides(overrides)
            axes = [_sweep_axis(text, override) for text, override in zip(overrides, parsed, strict=True)]
    except HydraException as error:
        raise ConfigError(_one_line(error)) from None
    swept = [len(axis) > 1 for axis in axes]
    points: dict[str, tuple[str, str, list[str]]] = {}
    for point in itertools.product(*axes):
        typed = [value for value, is_swept in zip(point, swept, strict=True) if is_swept]
        # In one order, whatever the command line's: the same sweep typed in another order resumes the same runs.
        values = ",".join(sorted(typed)) or "single"
        name = values.replace("/", "_")
        if name in points:
            raise ConfigError(_one_run_dir(points[name][0], values))
        points[name] = (values, (",".join(typed) or "single").replace("/", "_"), list(point))
    return [(name, former, point) for name, (_, former, point) in points.items()]


def _one_run_dir(first: str, second: str) -> str:
    """Why two points of a sweep would train one run directory, each resuming the other's checkpoints."""
    if first == second:
        value = first.rpartition("=")[2]
        numbers = " (1e-3 and 0.001 are one number)" if re.fullmatch(r"[-+]?\d*\.\d*(e[-+]?\d+)?", value) else ""
        return f"the sweep gives {first} twice, two jobs for one run directory: give each value once{numbers}"
    return (
        f"{first} and {second} would train one run directory, as '/' in a run directory's name is written '_': "
        "sweep them apart, each with a run_dir of its own"
    )


def _sweep_axis(text: str, override: Override) -> list[str]:
    """The overrides one command-line override stands for: itself, or one per value it sweeps."""
    if not override.is_sweep_override():
        return [text]
    key = override.get_key_element()
    if override.value_type == ValueType.INTERVAL_SWEEP:
        raise ConfigError(
            f"{text}: an interval is for a sweeper that draws values, and corolla runs every point of a sweep: list "
            f"them, {key}=a,b,c or {key}=range(start,stop,step)"
        )
    values = list(override.sweep_string_iterator())
    if not values:
        fix = (
            "glob() picks among a group's options: give a pattern that matches some (model=glob(bloom-*): conf/model/)"
            if override.value_type == ValueType.GLOB_CHOICE_SWEEP
            else "give a range() whose start comes before its stop, in the direction of its step"
        )
        raise ConfigError(f"{text} gives no value, so the sweep would run nothing: {fix}")
    return [f"{key}={value}" for value in values]


@contextmanager
def _initialized(command: str) -> Iterator[str]:
    """Hydra set up for the command, with the name of its primary config: `conf/<command>.yaml` when it exists (with
    option groups), else the bare schema."""
    _register()
    has_yaml = (CONF_DIR / f"{command}.yaml").is_file()
    context = initialize_config_dir(str(CONF_DIR), version_base=None) if has_yaml else initialize(version_base=None)
    with context:
        yield command if has_yaml else f"{command}_schema"


def compose_config(command: str, overrides: list[str]) -> DictConfig:
    """Composes `conf/<command>.yaml` when it exists (with option groups), else the bare schema.

    Commands without a YAML file take plain values only, so that e.g. `tokenizer=DIR` of `tokenizer evaluate`
    is a path, not a choice in the `tokenizer` group.
    """
    try:
        with _initialized(command) as config_name:
            return compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(_unreadable(overrides) or _one_line(error, command)) from None


def _home_written_out(override: str) -> str:
    """`key=~/path`, quoted or not, with the home directory written out, as a shell does where it expands `~` after
    `=`: where it does not, Hydra could not read it, and quoted it named a folder `~` in the working directory."""
    key, equals, value = override.partition("=")
    bare = value.strip("'\"")
    if not equals or not (bare == "~" or bare.startswith("~/")):
        return override
    return f"{key}={quoted(str(Path(bare).expanduser()))}"


def _unreadable(overrides: list[str]) -> str | None:
    """The first override Hydra's grammar cannot read (a path with spaces and brackets, a quote, an `=`), and how to
    write it so that it can."""
    for override in overrides:
        try:
            OverridesParser.create().parse_overrides([override])
        except HydraException as error:
            key, _, value = override.partition("=")
            reason = _one_line(error).split(";")[0]
            return (
                f"{override} cannot be read as key=value ({reason}): quote the value, as in "
                f'"{key}={quoted(value)}" (the quotes outside for the shell)'
            )
    return None


# The keys that name a path without ending in `_dir`: a corpus, a parallel set, a tokenizer, weights to start from.
PATH_KEYS = frozenset({"corpus", "parallel", "parallel_set", "parity_set", "base", "tokenizer", "init_from"})


def _check_no_empty_directory(cfg: DictConfig, prefix: str = "") -> None:
    """A path given as "" would be the working directory: `run_dir=` would write a run among whatever is there, and
    `corpus=` would encode whatever text is there."""
    for key, value in _given(cfg):
        if isinstance(value, DictConfig):
            _check_no_empty_directory(value, f"{prefix}{key}.")
        elif (str(key).endswith("_dir") or key in PATH_KEYS) and value == "":
            raise ConfigError(f"{prefix}{key} is empty, which would mean the working directory: pass {prefix}{key}=DIR")


def _check_known_keys(cfg: DictConfig, prefix: str = "") -> None:
    """Every key of a schema's node is one of its fields: `+` adds any key, and the typed object would drop a misspelt
    one (`+data.weight.fra_Latn=2`) without a word. Mappings (`data.weights`) take any key."""
    schema = OmegaConf.get_type(cfg)
    fields = [field.name for field in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    for key in cfg:
        if fields is not None and key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}: `--cfg` prints every valid key")
    for key, value in _given(cfg):
        if isinstance(value, DictConfig):
            _check_known_keys(value, f"{prefix}{key}.")


def _given(cfg: DictConfig) -> Iterator[tuple[object, object]]:
    """The node's keys and values, those still to give (???) left out."""
    return ((key, cfg[key]) for key in cfg if not OmegaConf.is_missing(cfg, key))


def _deleted_required(cfg: DictConfig, prefix: str = "") -> list[str]:
    """The schema's fields with no default that an override deleted (`~corpus`): the typed object would take MISSING's
    placeholder, "???", as their value."""
    schema = OmegaConf.get_type(cfg)
    fields = dataclasses.fields(schema) if dataclasses.is_dataclass(schema) else []
    keys = list(cfg.keys())
    deleted = [f"{prefix}{field.name}" for field in fields if field.default == MISSING and field.name not in keys]
    for key in keys:
        if not OmegaConf.is_missing(cfg, key) and isinstance(cfg[key], DictConfig):
            deleted += _deleted_required(cfg[key], f"{prefix}{key}.")
    return deleted


def _key_of(override: str) -> str:
    """The key an override sets, adds (`+key=`) or deletes (`~key`)."""
    return override.lstrip("+~").split("=", 1)[0]


def _check_shape_not_set(overrides: list[str]) -> None:
    """With init_from, the model's shape is the weights': an override of it would be dropped without a word."""
    for override in overrides:
        key = _key_of(override)
        if key == "model" or (key.startswith("model.") and key.removeprefix("model.") not in JOB_MODEL_SETTINGS):
            raise ConfigError(
                f"{override}: with init_from the model's shape is the weights' own; drop it (a job sets only "
                f"{', '.join(f'model.{name}' for name in JOB_MODEL_SETTINGS)} on weights it starts from)"
            )


def _check_vocabulary_not_set(overrides: list[str]) -> None:
    """tokenizer extend trains `added_pieces` pieces: a tokenizer.vocab_size given to it would be replaced without a
    word."""
    for override in overrides:
        key, value = _key_of(override), override.partition("=")[2]
        if key == "tokenizer.vocab_size":
            raise ConfigError(
                f"{override}: tokenizer extend trains added_pieces pieces, whatever tokenizer.vocab_size says: write "
                f"added_pieces={value or 'N'}"
            )


NO_TOKENIZER = "this job trains no tokenizer"


def _tokenizer_unused(job: TrainJob) -> str | None:
    """Why a training job trains no tokenizer of its own, and what to do instead, if it does not: its token files,
    its tokenizer or its weights' tokenizer are given."""
    instead = "drop it, or give data.corpus alone for the job to encode with a tokenizer of these settings"
    if job.data.tokens_dir:
        return f"data.tokens_dir={job.data.tokens_dir} holds token files encoded already, so {NO_TOKENIZER}: {instead}"
    if job.data.tokenizer_dir:
        return f"data.tokenizer_dir={job.data.tokenizer_dir} encodes data.corpus, so {NO_TOKENIZER}: {instead}"
    if job.init_from:
        return f"init_from's weights come with their tokenizer, so {NO_TOKENIZER}: drop it"
    return None


def _check_tokenizer_not_set(job: TrainJob, overrides: list[str]) -> None:
    """The tokenizer settings of a training job choose the tokenizer it trains to encode data.corpus: given where it
    trains none, they would be dropped without a word."""
    why = _tokenizer_unused(job)
    for override in overrides:
        key = _key_of(override)
        if why and (key == "tokenizer" or key.startswith("tokenizer.")):
            raise ConfigError(f"{override}: {why}")


def _check_slurm_settings_not_set(command: str, overrides: list[str]) -> None:
    """A run on this machine reads none of Slurm's settings: given to it, they would be dropped without a word."""
    on_slurm = "corolla pipeline cluster=NAME" if command == "pipeline" else "corolla submit cluster=NAME"
    for override in overrides:
        key = _key_of(override)
        node, _, setting = key.partition(".")
        if node == "cluster" and setting.split(".")[0] in SLURM_SETTINGS:
            raise ConfigError(
                f"{override}: corolla {command} on cluster.scheduler=local runs here, where Slurm's settings do "
                f"nothing: drop it, or run on a Slurm cluster ({on_slurm})"
            )


def _check_sampling_knobs(cfg: DictConfig, overrides: list[str]) -> None:
    """A tokenizer knob given where the sampling method does not read it (`tokenizer.alpha` with sampling=unimax)
    would be dropped without a word; `tokenizer extend` reads some whatever the sampling."""
    read_anyway = EXTEND_READS if OmegaConf.get_type(cfg) is TokenizerExtendJob else frozenset()
    for override in overrides:
        key = _key_of(override)
        node, _, knob = key.rpartition(".")
        if knob in read_anyway:
            continue
        sampling = OmegaConf.select(cfg, f"{node}.sampling", default=None) if node == "tokenizer" else None
        readers = SAMPLING_KNOBS.get(knob, ())
        if sampling is not None and readers and Sampling(getattr(sampling, "value", sampling)) not in readers:
            names = " or ".join(f"tokenizer.sampling={reader.value}" for reader in readers)
            raise ConfigError(
                f"{key} is read by {names} alone, not {Sampling(sampling).value}: drop it, or choose that"
            )


def _check_switches(cfg: DictConfig, overrides: list[str]) -> None:
    """An on/off knob given a number other than 0 or 1: OmegaConf takes any number as true, so a knob misread as a
    count (`parallel.activation_checkpointing=2`) would switch it on without a word."""
    for override in OverridesParser.create().parse_overrides(overrides):
        key, value = override.key_or_group, override.value()
        if override.is_delete() or type(value) is not int or value in (0, 1):
            continue
        if isinstance(OmegaConf.select(cfg, key, default=None), bool):
            raise ConfigError(f"{key}={value} is not a switch's value: write {key}=true or {key}=false")


def shown_config(command: str, overrides: list[str]) -> DictConfig:
    """What `--cfg` prints: the job's config, resolved and checked, the settings still to give as ???, so that a
    command's settings can be seen before they are all given."""
    return _composed(command, overrides)[0]


def compose_job(command: str, overrides: list[str]) -> tuple[DictConfig, object]:
    """The resolved config (for printing and recording) and its typed, validated object."""
    cfg, job, missing = _composed(command, overrides)
    if missing:
        raise ConfigError(f"missing value for {', '.join(missing)}: pass {missing[0]}=...")
    return cfg, job


# What stands for a setting still to give while the rest of its job is checked.
PLACEHOLDER = "(to give)"


def _composed(command: str, overrides: list[str]) -> tuple[DictConfig, object, list[str]]:
    """The resolved config, its typed and validated object and the settings it still leaves to give, which are
    checked as placeholders meanwhile."""
    overrides = [_home_written_out(override) for override in overrides]
    cfg = compose_config(command, overrides)
    _check_switches(cfg, overrides)
    try:
        OmegaConf.resolve(cfg)
        _check_no_empty_directory(cfg)
        _check_known_keys(cfg)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if deleted := _deleted_required(cfg):  # not shown as settings to give: refused
            given = sorted({*missing, *deleted})
            raise ConfigError(f"missing value for {', '.join(given)}: pass {given[0]}=...")
        filled = cfg.copy()
        for key in missing:
            OmegaConf.update(filled, key, PLACEHOLDER)
        job = OmegaConf.to_object(filled)
        if getattr(job, "init_from", None):
            _check_shape_not_set(overrides)
        if isinstance(job, TokenizerExtendJob):
            _check_vocabulary_not_set(overrides)
        if type(job) is TrainJob:  # the main job trains its tokenizer, into its data.tokens_dir
            _check_tokenizer_not_set(job, overrides)
        if isinstance(job, TrainJob) and command != "submit" and job.cluster.scheduler == Scheduler.local:
            _check_slurm_settings_not_set(command, overrides)
        _check_sampling_knobs(cfg, overrides)
        return cfg, job, missing
    except (OmegaConfBaseException, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(_one_line(error)) from None
