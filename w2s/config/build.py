"""Checking and building configs: :func:`validate` (types, choices, finiteness, bounds, then
each section's and the class's own ``check()``), and :func:`build_config` (defaults, then a
recipe, then CLI flags; unknown keys are errors). See :mod:`w2s.config`.
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from w2s.config.schema import (
    FlatField,
    InlineSection,
    coerce,
    flat_fields,
    fmt_number,
    is_optional,
    item_type,
    resolved_hints,
)
from w2s.errors import W2SError, did_you_mean

# --------------------------------------------------------------------------------------------
# validation


def validate(cfg: Any) -> Any:
    """Check a config the way the CLI does; return it. Raises a one-line :class:`W2SError`.

    In order: every section is an instance of its declared class; every leaf has its declared
    type (an int is accepted for a float), one of its ``choices``, is finite when a float
    (unless ``allow_inf``) and within its bounds; then the ``check()`` method of each section
    (nested or inline) and of the config class, which hold the rules across fields. Errors name
    the flag: ``--gamma must be > 0 and finite, got inf``.
    """
    if not is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"validate() takes a config instance, got {cfg!r}")
    _check_sections(cfg, ())
    for leaf in flat_fields(type(cfg)):
        value = cfg
        for part in leaf.path:
            value = getattr(value, part)
        _check_leaf(leaf, value)
    for part in _parts(cfg):
        check = getattr(type(part), "check", None)
        if callable(check):
            check(part)
    return cfg


def _check_sections(obj: Any, prefix: tuple[str, ...]) -> None:
    hints = resolved_hints(type(obj))
    for f in fields(obj):
        tp = hints[f.name]
        if not is_dataclass(tp):
            continue
        value = getattr(obj, f.name)
        key = ".".join(prefix + (f.name,))
        if not isinstance(value, tp):
            raise W2SError(f"config key '{key}' is a section: give a {tp.__name__}, got "
                           f"{value!r}")
        _check_sections(value, prefix + (f.name,))


def _parts(cfg: Any) -> list[Any]:
    """The sections of a config, innermost first, then the config itself (what checks run on)."""
    out: list[Any] = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            out += _parts(value)
    views = {name: attr for klass in reversed(type(cfg).__mro__)
             for name, attr in vars(klass).items() if isinstance(attr, InlineSection)}
    out += [attr.__get__(cfg) for attr in views.values()]
    return out + [cfg]


_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool"}


def _type_ok(value: Any, tp: Any) -> bool:
    optional, inner = is_optional(tp)
    if value is None:
        return optional
    item, many = item_type(inner)
    if many:
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if get_origin(inner) is Literal:
        return value in get_args(inner)
    if inner is bool:
        return isinstance(value, bool)
    if inner is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if inner is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if inner is str:
        return isinstance(value, str)
    if isinstance(inner, type) and issubclass(inner, Path):
        return isinstance(value, (str, Path))
    return True  # Any, unions of several types: not checked here


def _check_leaf(leaf: FlatField, value: Any) -> None:
    if not _type_ok(value, leaf.type):
        item, many = leaf.item_type
        name = getattr(item, "__name__", str(item))
        raise W2SError(f"{leaf.label} expects {f'a list of {name}' if many else name}, got "
                       f"{value!r}")
    if value is None:
        return
    _check_choices(value, leaf.choices, leaf.key)
    item, _ = leaf.item_type
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        finite = math.isfinite(v) or (leaf.allow_inf and not math.isnan(v))
        if finite and _within(v, leaf.bounds):
            continue
        if leaf.message and finite:  # the override speaks of the range; NaN gets the generic
            raise W2SError(f"{leaf.message}, got {v!r}")
        raise W2SError(f"{leaf.label} must be {_range_words(leaf, item is float)}, got {v!r}")


def _within(v: float, b: dict[str, float]) -> bool:
    return (("min" not in b or v >= b["min"]) and ("max" not in b or v <= b["max"])
            and ("above" not in b or v > b["above"]) and ("below" not in b or v < b["below"]))


def _range_words(leaf: FlatField, is_float: bool) -> str:
    """``in [0, 1]``, ``> 0 and finite``, ``at least 1``, ``finite``: what an error says."""
    b = leaf.bounds
    low = ("min", b["min"]) if "min" in b else ("above", b["above"]) if "above" in b else None
    high = ("max", b["max"]) if "max" in b else ("below", b["below"]) if "below" in b else None
    if low and high:
        text = (f"in {'[' if low[0] == 'min' else '('}{fmt_number(low[1])}, {fmt_number(high[1])}"
                f"{']' if high[0] == 'max' else ')'}")
    elif low:
        text = (f"at least {fmt_number(low[1])}" if low[0] == "min" and not is_float
                else f"{'>=' if low[0] == 'min' else '>'} {fmt_number(low[1])}")
    elif high:
        text = f"{'<=' if high[0] == 'max' else '<'} {fmt_number(high[1])}"
    else:
        text = ""
    if is_float and not (low and high):
        finite = "not NaN" if leaf.allow_inf else "finite"
        text = f"{text} and {finite}" if text else finite
    return text


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
    hints = resolved_hints(type(cfg))
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
    """Defaults <- recipe <- overrides, then :func:`validate`. Override keys are dotted paths
    (``train.lr``) or leaf names (``lr``) as the CLI flag names them; values may be strings
    (from the CLI)."""
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
    return validate(cfg)


def config_to_dict(cfg: Any) -> dict:
    """Plain dict of a config (nested sections as dicts, inline ones at the parent level, as
    they are stored): what config.yaml stores, a valid recipe."""
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
