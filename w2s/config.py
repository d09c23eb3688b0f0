"""Configs: dataclasses with help text, filled from a recipe YAML, overridden by CLI flags.

Every command's options are one dataclass. A field is declared with :func:`option`::

    @dataclass
    class GeneralizeConfig:
        weak: str = option("gpt2", "weak model: registry alias, local path, hub id or tiny:...")
        loss: str = option("xent", "training loss for the strong student",
                           choices=["xent", "logconf", "product"])
        train: TrainConfig = section(TrainConfig, "optimisation of every model")

Precedence, lowest first: the dataclass defaults, the recipe (``--recipe X.yaml``), CLI flags.
Unknown keys in a recipe and unknown flags are errors that name the key and the closest valid
one (a misspelled key silently ignored is how runs go wrong: trl PR #3543). Nested dataclasses are
sections: a mapping in the recipe (``train: {lr: 1e-5}``) and, on the command line, flags named by
the leaf (``--lr``) unless two sections share a leaf name, then ``--train-lr``.

The resolved config is saved in each run directory (``config.yaml``) and is itself a valid recipe.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from w2s.errors import W2SError, did_you_mean

__all__ = ["comma_list", "option", "section", "load_recipe", "build_config", "config_to_dict", "flat_fields",
           "FlatField", "coerce", "dataclass", "field", "StageTrain", "stage_train"]


def comma_list(text: Any) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the names of a comma-separated option (``--weak
    a,b``, ``--only x,y``), blanks dropped, order kept."""
    return [part.strip() for part in str(text or "").split(",") if part.strip()]


def option(default: Any, help: str, *, choices: list | None = None, cli: str | None = None) -> Any:
    """A config field with help text (shown by ``--help``) and optional allowed ``choices``.

    Mutable defaults (lists, dicts) are copied per instance. ``cli`` overrides the flag name.
    """
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = list(choices)
    if cli is not None:
        meta["cli"] = cli
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, help: str) -> Any:
    """A nested config dataclass (a mapping in the recipe, leaf-named flags on the CLI)."""
    return field(default_factory=cls, metadata={"help": help, "section": True})


# --------------------------------------------------------------------------------------------
# type coercion


def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            return True, (args[0] if len(args) == 1 else Union[tuple(args)])
    return False, tp


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a recipe or CLI value to the field's type; a mismatch is a W2SError naming key.

    CLI values arrive as strings: ``"1e-5"`` -> float, ``"true"`` -> bool, ``"0,1,2"`` -> list[int],
    ``"none"`` -> None for optional fields.
    """
    optional, inner = _is_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise W2SError(f"config key '{key}' cannot be empty; give a value")
    origin = get_origin(inner)
    try:
        if origin in (list, tuple) or inner in (list, tuple):
            (item_tp,) = get_args(inner)[:1] or (str,)
            if isinstance(value, str):
                items = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(value, (list, tuple)):
                items = list(value)
            else:
                items = [value]
            return [coerce(v, item_tp, key) for v in items]
        if origin is Literal:
            allowed = get_args(inner)
            if value not in allowed:
                raise W2SError(f"config key '{key}' must be one of {list(allowed)}, got {value!r}"
                               f"{did_you_mean(value, allowed)}")
            return value
        if inner is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if inner is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str):
                f = float(value)
                if not f.is_integer():
                    raise ValueError
                return int(f)
            return int(value)
        if inner is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if inner is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if inner is Any:
            return value
        if isinstance(inner, type) and issubclass(inner, Path):
            return Path(value)
    except W2SError:
        raise
    except (ValueError, TypeError):
        name = getattr(inner, "__name__", str(inner))
        raise W2SError(f"config key '{key}' expects {name}, got {value!r}") from None
    return value


# --------------------------------------------------------------------------------------------
# flattening for the CLI


@dataclass
class FlatField:
    """One leaf of a (possibly nested) config: its path, CLI flag, type, default, help."""

    path: tuple[str, ...]
    flag: str
    type: Any
    default: Any
    help: str
    choices: list | None

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def is_bool(self) -> bool:
        return _is_optional(self.type)[1] is bool


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def flat_fields(cls: type) -> list[FlatField]:
    """The leaves of a config dataclass with their CLI flag names (see module docstring)."""
    leaves: list[FlatField] = []

    def walk(c: type, prefix: tuple[str, ...]) -> None:
        hints = _resolved_hints(c)
        for f in fields(c):
            tp = hints[f.name]
            if is_dataclass(tp):
                walk(tp, prefix + (f.name,))
                continue
            meta = f.metadata or {}
            leaves.append(FlatField(prefix + (f.name,), meta.get("cli", ""), tp, _default_of(f),
                                    meta.get("help", ""), meta.get("choices")))

    walk(cls, ())
    counts: dict[str, int] = {}
    for leaf in leaves:
        counts[leaf.path[-1]] = counts.get(leaf.path[-1], 0) + 1
    for leaf in leaves:
        if not leaf.flag:
            name = leaf.path[-1] if counts[leaf.path[-1]] == 1 else "_".join(leaf.path)
            leaf.flag = "--" + name.replace("_", "-")
    return leaves


# --------------------------------------------------------------------------------------------
# recipes and building


def load_recipe(path: str | Path) -> dict:
    """Read a recipe YAML (a mapping). Missing file or bad YAML -> W2SError."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise W2SError(f"recipe {path} not found; recipes live under recipes/ (e.g. "
                       "recipes/generalize/tiny.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise W2SError(f"recipe {path}{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise W2SError(f"recipe {path} must be a mapping of config keys, got {type(data).__name__}")
    return data


def _apply_mapping(cfg: Any, mapping: dict, origin: str, prefix: str = "") -> None:
    hints = _resolved_hints(type(cfg))
    names = {f.name: f for f in fields(cfg)}
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise W2SError(f"unknown key '{full}' in {origin}{did_you_mean(key, names)}")
        f = names[key]
        tp = hints[key]
        if is_dataclass(tp):
            if not isinstance(value, dict):
                raise W2SError(f"key '{full}' in {origin} is a section: give a mapping of its keys")
            _apply_mapping(getattr(cfg, key), value, origin, prefix=f"{full}.")
            continue
        v = coerce(value, tp, full)
        choices = (f.metadata or {}).get("choices")
        _check_choices(v, choices, full)
        setattr(cfg, key, v)


def _check_choices(value: Any, choices: list | None, key: str) -> None:
    if not choices or value is None:
        return
    for v in value if isinstance(value, list) else [value]:
        if v not in choices:
            raise W2SError(f"config key '{key}' must be one of {choices}, got {v!r}"
                           f"{did_you_mean(v, choices)}")


def build_config(cls: type, recipe: dict | str | Path | None = None,
                 overrides: dict[str, Any] | None = None) -> Any:
    """Defaults <- recipe <- overrides. Override keys are dotted paths (``train.lr``) or leaf
    names (``lr``) as the CLI flag names them; values may be strings (from the CLI)."""
    cfg = cls()
    origin = "the recipe"
    if isinstance(recipe, (str, Path)):
        origin = f"recipe {recipe}"
        recipe = load_recipe(recipe)
    if recipe:
        recipe = {k: v for k, v in recipe.items() if k != "method"}  # saved configs carry it
        _apply_mapping(cfg, recipe, origin)
    if overrides:
        leaves = {leaf.key: leaf for leaf in flat_fields(cls)}
        by_flag = {leaf.flag.lstrip("-").replace("-", "_"): leaf for leaf in leaves.values()}
        for key, value in overrides.items():
            leaf = leaves.get(key) or by_flag.get(key.replace("-", "_"))
            if leaf is None:
                flags = [lf.flag for lf in leaves.values()]
                raise W2SError(f"unknown option '{key}'{did_you_mean('--' + key, flags)}")
            nested = {}
            cursor = nested
            for part in leaf.path[:-1]:
                cursor = cursor.setdefault(part, {})
            cursor[leaf.path[-1]] = value
            _apply_mapping(cfg, nested, "the command line")
    return cfg


def config_to_dict(cfg: Any) -> dict:
    """Plain dict of a config (nested sections as dicts): what config.yaml stores."""
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if is_dataclass(v):
            out[f.name] = config_to_dict(v)
        elif isinstance(v, Path):
            out[f.name] = str(v)
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        else:
            out[f.name] = v
    return out


# --------------------------------------------------------------------------------------------
# training sections


@dataclass
class StageTrain:
    """How one model of a method is trained: a recipe section (``weak_train:``, ``dpo:``, ...)
    holding the loop's settings, turned into a :class:`w2s.train.TrainConfig` by
    :meth:`train_config`.

    Each method derives its sections with :func:`stage_train` (same fields, its own defaults and
    help), so every method's training is configured the same way. ``lr`` / ``epochs`` none
    means "the method's default for this stage" (given to :meth:`train_config`).
    """

    lr: float | None = field(default=None, metadata={
        "help": "peak learning rate; none = the method's default for this stage"})
    epochs: float | None = field(default=1.0, metadata={
        "help": "passes over the training examples (fractions allowed)"})
    max_steps: int | None = field(default=None, metadata={
        "help": "optimizer steps; overrides epochs when set"})
    batch_size: int = field(default=32, metadata={"help": "global batch (examples per step)"})
    micro_batch_size: int | None = field(default=8, metadata={
        "help": "examples per forward pass per device (gradient accumulation makes up the "
                "rest); none = the batch split evenly over the processes"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw, adam or sgd"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    scheduler: str = field(default="cosine", metadata={"help": "cosine, linear or constant"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "lr warm-up fraction"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping"})
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16"})
    checkpoint_every: int = field(default=0, metadata={
        "help": "resumable checkpoint every N steps (0: every epoch)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations: less memory, slower"})

    def train_config(self, *, seed: int, default_lr: float | None = None,
                     default_epochs: float | None = None, **changes: Any):
        """The validated :class:`w2s.train.TrainConfig` of this stage: ``lr``/``epochs`` from
        the section, else the defaults given here; ``seed``; then ``changes`` (e.g.
        ``max_steps=None``)."""
        from w2s.train import TrainConfig

        names = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in names}
        values["lr"] = self.lr if self.lr is not None else default_lr
        values["epochs"] = self.epochs if self.epochs is not None else default_epochs
        if values["lr"] is None or values["epochs"] is None:
            raise ValueError("a stage without lr or epochs needs default_lr / default_epochs")
        config = TrainConfig(**{**values, "seed": seed, **changes})
        config.validate()
        return config


def stage_train(name: str, doc: str, *, module: str, help: dict[str, str] | None = None,
                **defaults: Any) -> type:
    """A :class:`StageTrain` subclass with other ``defaults`` (and ``help`` texts): one line per
    method section instead of a copy of every field, e.g.
    ``WSPOTrain = stage_train("WSPOTrain", "...", module=__name__, lr=5e-6, epochs=3.0)``."""
    help = help or {}
    unknown = set(defaults) | set(help)
    unknown -= {f.name for f in dataclasses.fields(StageTrain)}
    if unknown:
        raise TypeError(f"{name}: StageTrain has no field(s) {sorted(unknown)}")
    hints = typing.get_type_hints(StageTrain)
    fields = []
    for f in dataclasses.fields(StageTrain):
        if f.name not in defaults and f.name not in help:
            continue
        meta = {**f.metadata, "help": help.get(f.name, f.metadata["help"])}
        fields.append((f.name, hints[f.name],
                       field(default=defaults.get(f.name, f.default), metadata=meta)))
    cls = dataclasses.make_dataclass(name, fields, bases=(StageTrain,))
    cls.__doc__ = doc
    cls.__module__ = module
    return cls
