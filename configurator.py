"""Turns `train.py config/a.py config/b.py --key=value ...` into one typed, validated Config.

Config files are plain Python, exec'd in order into one namespace; `--key=value` overrides come
last. Override values are parsed as Python literals and otherwise taken as strings. Every key is
checked against ModelConfig and TrainConfig: unknown keys, wrong types, missing or failing files
and unknown component names all become a ConfigError with a one-paragraph message; the entry
points print it and exit with code 2 (load_config_or_exit).

Where each value came from is kept ("default", "preset <name>", a file name, "command line") so
the start-up printout can show it.
"""
import ast
import dataclasses
import sys
import traceback
import types
import typing
from pathlib import Path

from model_components import UnknownComponentError, did_you_mean
from model_config import PRESETS, ConfigError, ModelConfig
from train_config import Config, TrainConfig

COMMAND_LINE = "command line"
MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}
TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
ALL_FIELDS = {**MODEL_FIELDS, **TRAIN_FIELDS}
_TRUE, _FALSE = ("true", "1"), ("false", "0")


def load_config(argv):
    """argv without the program name -> (Config, {key: source of its value})."""
    config_files, overrides = split_argv(argv)
    values, sources = {}, {}
    for path in config_files:
        _exec_config_file(path, values, sources)
    for key, raw in overrides:
        values[key] = _parse_override(key, raw)
        sources[key] = COMMAND_LINE
    typed = {key: _coerce(key, value, ALL_FIELDS[key].type, sources[key]) for key, value in values.items()}
    return _build(typed, sources)


def load_config_or_exit(argv):
    try:
        return load_config(argv)
    except ConfigError as error:
        print(f"Configuration error: {error}", file=sys.stderr)
        sys.exit(2)


def split_argv(argv):
    """Config files, and (key, raw value) overrides from --key=value, --key value (non-boolean
    keys) and a bare --flag (boolean keys, raw value None)."""
    config_files, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            config_files.append(arg)
            continue
        key, sep, raw = arg[2:].partition("=")
        if key not in ALL_FIELDS:
            raise ConfigError(_unknown_key_message(key, COMMAND_LINE))
        if not sep and i < len(argv) and not argv[i].startswith("--") and not _is_bool(ALL_FIELDS[key].type):
            raw, sep, i = argv[i], "=", i + 1
        overrides.append((key, raw if sep else None))
    return config_files, overrides


def read_config_file(path, values=None):
    """The settings a config file makes: its assignments, run on top of `values` (earlier
    settings it may read), minus names starting with _ and imported modules, functions and classes."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Config file {path!r} does not exist. Config files are Python files of "
                          f"assignments such as config/arch_gpt2.py; pass them before --key=value overrides.")
    namespace = dict(values or {})
    try:
        exec(compile(file.read_text(), str(file), "exec"), namespace)
    except Exception as error:  # any error in user code becomes one clear paragraph
        raise ConfigError(f"Config file {path} raised {type(error).__name__} at line "
                          f"{_error_line(error, str(file))}: {error}") from None
    return {key: value for key, value in namespace.items()
            if not key.startswith("_") and not isinstance(value, (types.ModuleType, types.FunctionType, type))}


def _exec_config_file(path, values, sources):
    for key, value in read_config_file(path, values).items():
        if key not in ALL_FIELDS:
            raise ConfigError(_unknown_key_message(key, f"config file {path}"))
        if key not in values or values[key] is not value:
            values[key], sources[key] = value, path


def _error_line(error, filename):
    if isinstance(error, SyntaxError):
        return error.lineno
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == filename]
    return lines[-1] if lines else "?"


def _parse_override(key, raw):
    if raw is None:  # a bare --flag
        if not _is_bool(ALL_FIELDS[key].type):
            raise ConfigError(f"--{key} needs a value (--{key}=VALUE); only boolean keys may be given alone.")
        return True
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _coerce(key, value, annotation, source):
    """Checks value against the field's type; an int may set a float, "true"/"0"... a bool."""
    accepted = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for kind in accepted:
        if kind is type(None) and value is None:
            return None
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in _TRUE + _FALSE:
                return str(value).lower() in _TRUE
        elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        elif kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        elif kind is str and isinstance(value, str):
            return value
        elif typing.get_origin(kind) in (list, dict) and isinstance(value, (list, tuple, dict)):
            return typing.get_origin(kind)(value)
        elif typing.get_origin(kind) is list and isinstance(value, str):
            return [item for item in value.split(",") if item]  # --logger_backends=tensorboard,wandb
    raise ConfigError(f"{key}={value!r} (from {source}) is a {type(value).__name__}, but {key} takes "
                      f"{_type_name(annotation)}. Example: --{key}={_example(annotation)}.")


def _build(typed, sources):
    preset = typed.get("arch_preset", "custom")
    if preset not in PRESETS:
        raise ConfigError(f"arch_preset={preset!r} (from {sources.get('arch_preset')}) is not a preset. "
                          f"Presets: {', '.join(PRESETS)}.{did_you_mean(preset, PRESETS)}")
    model_values = {k: v for k, v in typed.items() if k in MODEL_FIELDS and k != "arch_preset"}
    train_values = {k: v for k, v in typed.items() if k in TRAIN_FIELDS}
    try:
        config = Config(model=ModelConfig.from_preset(preset, **model_values),
                        train=TrainConfig(**train_values))
    except UnknownComponentError as error:
        raise ConfigError(str(error)) from None
    for key in PRESETS[preset]:
        sources.setdefault(key, f"preset {preset}")
    return config, sources


def describe_changes(config, sources):
    """Lines 'key = value  (source)' for every value that differs from the dataclass default."""
    defaults = {**dataclasses.asdict(ModelConfig()), **dataclasses.asdict(TrainConfig())}
    effective = {**config.model.to_dict(), **dataclasses.asdict(config.train)}
    lines = []
    for key, value in effective.items():
        if value != defaults[key]:
            lines.append(f"  {key} = {value!r}  ({sources.get(key, 'derived')})")
    return lines


# how this invocation runs, not what the run is: never taken from a checkpoint, so a run saved
# under FSDP on 8 GPUs resumes under DDP, ZeRO-1 or one process as launched now
MACHINE_KEYS = {"use_zero1", "use_fsdp", "fsdp_reshard_after_forward", "dist_timeout_minutes", "device", "compile",
                "dry_run", "ignore_memory_check", "auto_batch_size"}


def explicit_keys(sources):
    """The keys set in a config file or on the command line, not by a default or a preset."""
    return {key for key, source in sources.items() if not str(source).startswith(("default", "preset"))}


def merge_resumed_config(config, sources, saved):
    """The configuration of a resumed run: the checkpoint's architecture wins (its weights have that
    shape; each explicit conflict is returned for a warning), and its training options are kept
    unless set explicitly now (so --resume=latest --max_iters=N extends a run deliberately).
    Returns (config, sources, conflicts as (key, saved value, requested value))."""
    explicit = explicit_keys(sources)
    requested_model = config.model.to_dict()
    conflicts = [(key, value, requested_model[key]) for key, value in saved["model"].items()
                 if key in explicit and requested_model.get(key) != value]
    saved_train = {k: v for k, v in saved["train"].items() if k in TRAIN_FIELDS and k not in MACHINE_KEYS}
    explicit_train = {k: v for k, v in dataclasses.asdict(config.train).items() if k in explicit}
    merged = Config(model=ModelConfig(**saved["model"]), train=TrainConfig(**{**saved_train, **explicit_train}))
    merged_sources = {**{key: "checkpoint" for key in {**saved["model"], **saved_train}},
                      **{key: sources[key] for key in explicit_train}}
    return merged, merged_sources, conflicts


def _unknown_key_message(key, where):
    return (f"Unknown config key {key!r} in {where}.{did_you_mean(key, ALL_FIELDS, n=3)} Known keys are the fields of ModelConfig "
            f"(model_config.py) and TrainConfig (train_config.py); config/arch_custom.py lists the "
            f"architecture options.")


def _is_bool(annotation):
    return annotation is bool or (isinstance(annotation, types.UnionType) and bool in typing.get_args(annotation))


def _type_name(annotation):
    if isinstance(annotation, types.UnionType):
        return " or ".join("None" if a is type(None) else getattr(a, "__name__", str(a))
                           for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def _example(annotation):
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return {int: "8", float: "3e-4", bool: "True", str: "name"}.get(kinds[0], "VALUE")
