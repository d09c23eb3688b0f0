"""Declaring configs: fields with help text, choices and bounds (:func:`option`), nested and
inline sections (:func:`section`), the class decorator that splices inline sections in
(:func:`config_class`), derived classes with other defaults (:func:`derive`), and the flat view
of a config's leaves that the CLI, the validator and the recipe loader share
(:func:`flat_fields`, :func:`coerce`). See :mod:`w2s.config` for the whole story.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from w2s.errors import W2SError, did_you_mean

_BOUNDS = ("min", "max", "above", "below")


def comma_list(text: Any) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the names of a comma-separated option (``--weak
    a,b``, ``--only x,y``), blanks dropped, order kept."""
    return [part.strip() for part in str(text or "").split(",") if part.strip()]


def option(default: Any, help: str, *, choices: list | None = None, cli: str | None = None,
           min: float | None = None, max: float | None = None, above: float | None = None,
           below: float | None = None, allow_inf: bool = False,
           message: str | None = None) -> Any:
    """A config field with help text (shown by ``--help``), optional ``choices`` and bounds.

    - ``min`` / ``max``: inclusive bounds (``min=1``: at least 1); ``above`` / ``below``: strict
      ones (``above=0``: a learning rate). For a list field they apply to every item; a field
      whose value is none (an optional field left unset) is not bounded.
    - float fields must be finite (NaN and inf are refused) unless ``allow_inf=True``.
    - ``message``: the sentence a finite value out of bounds gets instead of the generic
      ``--flag must be ...`` (``", got <value>"`` is appended; NaN and inf keep the generic
      one); for messages that scripts and tests rely on.
    - ``cli`` overrides the flag name. Mutable defaults (lists, dicts) are copied per instance.
    """
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = list(choices)
    if cli is not None:
        meta["cli"] = cli
    bounds = {k: v for k, v in (("min", min), ("max", max), ("above", above), ("below", below))
              if v is not None}
    if "min" in bounds and "above" in bounds or "max" in bounds and "below" in bounds:
        raise TypeError("give min or above (max or below), not both")
    if bounds:
        meta["bounds"] = bounds
    if allow_inf:
        meta["allow_inf"] = True
    if message is not None:
        meta["message"] = message
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, help: str, *, inline: bool = False, drop: tuple[str, ...] = (),
            prefixed: bool = False) -> Any:
    """A group of settings: a nested config dataclass.

    Nested (the default): a mapping in the recipe (``dpo: {lr: ...}``), leaf-named flags on the
    CLI, ``cfg.dpo`` an instance of ``cls``.

    ``prefixed=True``: a nested section's flags always carry its name (``--genarm-train-lr``),
    even where the leaf name alone would be unique (a ``--lr`` of a command whose main job
    trains nothing would mislead).

    ``inline=True``: the fields of ``cls`` become fields of the parent (declare the parent with
    :func:`config_class`), keeping their names, flags and recipe keys, and ``cfg.<name>`` is a
    live view of them. ``drop`` leaves out fields the parent does not have (a method that takes
    no ``--device`` uses ``section(Runtime, ..., inline=True, drop=("device",))``).
    """
    if drop and not inline:
        raise TypeError("drop= is for inline sections (a nested section holds every field)")
    unknown = set(drop) - {f.name for f in fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)} to drop")
    meta: dict[str, Any] = {"help": help, "section": True, "prefixed": prefixed}
    if inline:
        meta.update(inline=True, section_class=cls, drop=tuple(drop))
    return field(default_factory=cls, metadata=meta)


# --------------------------------------------------------------------------------------------
# inline sections


def config_class(cls: type | None = None, /, **dataclass_options: Any) -> Any:
    """``@dataclass`` for a command's config: splices in its inline sections, then makes it a
    dataclass (``dataclass_options`` are passed on).

    For each ``name: Section = section(Section, ..., inline=True)`` it declares the fields of
    ``Section`` in its place (their types, defaults, help and bounds; each marked with the
    section's name), and installs ``name`` as a view: ``cfg.name.x`` is ``cfg.x``.

    Why the storage is flat and the section a view, not the other way round: everything that
    treats a config as a plain dataclass keeps working unchanged, namely ``dataclasses.fields``
    (what :class:`w2s.runs.Run` writes to config.yaml), ``asdict``, ``replace(cfg, seed=1)``,
    ``Config(seed=1)``, and every ``cfg.seed`` in the experiments.
    """

    def wrap(cls: type) -> type:
        own = dict(cls.__dict__.get("__annotations__", {}))
        annotations: dict[str, Any] = {}
        inline: dict[str, tuple[type, tuple[str, ...]]] = {}
        for name, annotation in own.items():
            declared = cls.__dict__.get(name)
            meta = declared.metadata if isinstance(declared, dataclasses.Field) else {}
            if not meta.get("inline"):
                annotations[name] = annotation
                continue
            section_cls = meta["section_class"]
            hints = typing.get_type_hints(section_cls)
            kept = []
            for f in fields(section_cls):
                if f.name in meta["drop"]:
                    continue
                if f.name in own or f.name in annotations:
                    raise TypeError(f"{cls.__name__}: inline section '{name}' brings a field "
                                    f"'{f.name}' that the class already has")
                annotations[f.name] = hints[f.name]
                setattr(cls, f.name, field(default=f.default, default_factory=f.default_factory,
                                           metadata={**f.metadata, "in_section": name}))
                kept.append(f.name)
            delattr(cls, name)
            inline[name] = (section_cls, tuple(kept))
        cls.__annotations__ = annotations
        out = dataclasses.dataclass(cls, **dataclass_options)
        for name, (section_cls, kept) in inline.items():
            setattr(out, name, InlineSection(name, section_cls, kept))
        return out

    return wrap if cls is None else wrap(cls)


class InlineSection:
    """The descriptor behind ``cfg.<section>`` of an inline section (see :func:`config_class`).

    ``cfg.runtime`` returns a view: an instance of a subclass of the section class whose fields
    are properties reading and writing the parent's (``cfg.runtime.seed = 3`` sets ``cfg.seed``),
    so the section's methods work on it. ``dataclasses.fields(view)`` lists the fields the parent
    has (not dropped ones). ``cfg.runtime = Runtime(...)`` copies that section's values in.
    """

    def __init__(self, name: str, section_cls: type, names: tuple[str, ...]):
        self.name, self.section_cls, self.names = name, section_cls, names
        self.view_cls = _view_class(section_cls, names)

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        view = object.__new__(self.view_cls)
        object.__setattr__(view, "_owner", obj)
        return view

    def __set__(self, obj: Any, value: Any) -> None:
        for name in self.names:
            setattr(obj, name, getattr(value, name))


def _view_class(section_cls: type, names: tuple[str, ...]) -> type:
    """A subclass of ``section_cls`` whose instances forward ``names`` to ``self._owner``."""
    title = section_cls.__name__

    def forward(name: str) -> property:
        return property(lambda self: getattr(self._owner, name),
                        lambda self, value: setattr(self._owner, name, value))

    def dropped(name: str) -> property:
        def get(self):
            raise AttributeError(f"{type(self._owner).__name__} has no '{name}' (its {title} "
                                 "section leaves it out)")
        return property(get)

    def init(self, *args, **kwargs):
        raise TypeError(f"a {title} view cannot be constructed or replaced; build a {title} "
                        "or change the fields of the config itself")

    def setattr_(self, name, value):
        if name not in names:
            raise AttributeError(f"{title} view: no field '{name}'")
        object.__setattr__(self, name, value)  # the property forwards it

    def values(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in names}

    namespace: dict[str, Any] = {
        f.name: forward(f.name) if f.name in names else dropped(f.name)
        for f in fields(section_cls)}
    namespace.update(
        __dataclass_fields__={n: f for n, f in section_cls.__dataclass_fields__.items()
                              if n in names},
        __init__=init, __setattr__=setattr_, __hash__=None,
        __repr__=lambda self: "{}({})".format(
            title, ", ".join(f"{k}={v!r}" for k, v in values(self).items())),
        __eq__=lambda self, other: (is_dataclass(other) and not isinstance(other, type)
                                    and values(self) == {n: getattr(other, n, MISSING)
                                                         for n in names}),
        __doc__=f"Live view of the {title} fields of a config (see InlineSection).")
    return type(f"{title}View", (section_cls,), namespace)


def derive(cls: type, name: str | None = None, doc: str | None = None, *,
           module: str | None = None, help: dict[str, str] | None = None,
           **defaults: Any) -> type:
    """A subclass of the section dataclass ``cls`` with other ``defaults`` (and ``help``
    texts): one line per method instead of a copy of every field, e.g.
    ``derive(Sampling, temperature=0.7, max_new_tokens=50)``. Bounds and choices are kept."""
    help = help or {}
    unknown = (set(defaults) | set(help)) - {f.name for f in fields(cls)}
    if unknown:
        raise TypeError(f"{name or cls.__name__}: {cls.__name__} has no field(s) "
                        f"{sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    changed = []
    for f in fields(cls):
        if f.name not in defaults and f.name not in help:
            continue
        meta = {**f.metadata, "help": help.get(f.name, f.metadata.get("help", ""))}
        if f.name in defaults:
            value = defaults[f.name]
            if isinstance(value, (list, dict, set)):
                new = field(default_factory=lambda d=value: type(d)(d), metadata=meta)
            else:
                new = field(default=value, metadata=meta)
        else:
            new = field(default=f.default, default_factory=f.default_factory, metadata=meta)
        changed.append((f.name, hints[f.name], new))
    out = dataclasses.make_dataclass(name or cls.__name__, changed, bases=(cls,))
    out.__doc__ = doc if doc is not None else cls.__doc__
    out.__module__ = module or cls.__module__
    return out


# --------------------------------------------------------------------------------------------
# type coercion


def resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_optional(tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            return True, (args[0] if len(args) == 1 else Union[tuple(args)])
    return False, tp


def item_type(tp: Any) -> tuple[Any, bool]:
    """``(type of one value, is a list)``: ``list[int] | None`` -> ``(int, True)``."""
    inner = is_optional(tp)[1]
    if get_origin(inner) in (list, tuple) or inner in (list, tuple):
        return (get_args(inner)[:1] or (str,))[0], True
    return inner, False


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a recipe or CLI value to the field's type; a mismatch is a W2SError naming key.

    CLI values arrive as strings: ``"1e-5"`` -> float, ``"true"`` -> bool, ``"0,1,2"`` -> list[int],
    ``"none"`` -> None for optional fields. Ranges are :func:`validate`'s job, not this one's.
    """
    optional, inner = is_optional(tp)
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
    """One leaf of a (possibly nested) config: its path, CLI flag, type, default, help, and
    what :func:`validate` holds it to (``bounds``: ``min``/``max``/``above``/``below``)."""

    path: tuple[str, ...]
    flag: str
    type: Any
    default: Any
    help: str
    choices: list | None
    bounds: dict[str, float] = field(default_factory=dict)
    allow_inf: bool = False
    message: str | None = None
    in_section: str | None = None  # the inline section it came from (runtime, sampling, ...)

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def is_bool(self) -> bool:
        return is_optional(self.type)[1] is bool

    @property
    def item_type(self) -> tuple[Any, bool]:
        """``(type of one value, is a list)``, none-ability left out: what ``--help`` names."""
        return item_type(self.type)

    @property
    def label(self) -> str:
        """How errors name the leaf: its flag, plus the recipe key when a section hides it."""
        return self.flag if len(self.path) == 1 else f"{self.flag} (config key '{self.key}')"

    def range_text(self) -> str:
        """The bounds as ``--help`` shows them (``x>=1``, ``0<x<=1``); empty when unbounded."""
        b = self.bounds
        if "min" in b or "above" in b:
            low, strict = (b["above"], True) if "above" in b else (b["min"], False)
            if "max" not in b and "below" not in b:  # one-sided, as click writes it: x>=1
                return f"x{'>' if strict else '>='}{fmt_number(low)}"
            start = f"{fmt_number(low)}{'<' if strict else '<='}"
        else:
            start = ""
        if "max" in b or "below" in b:
            return f"{start}x{'<' if 'below' in b else '<='}{fmt_number(b.get('below', b.get('max')))}"
        return ""


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def flat_fields(cls: type) -> list[FlatField]:
    """The leaves of a config dataclass with their CLI flag names (see module docstring)."""
    leaves: list[FlatField] = []

    def walk(c: type, prefix: tuple[str, ...], prefixed: bool = False) -> None:
        hints = resolved_hints(c)
        for f in fields(c):
            meta = f.metadata or {}
            if meta.get("inline"):
                raise TypeError(f"{c.__name__}.{f.name} is an inline section: declare "
                                f"{c.__name__} with @config_class, not @dataclass")
            tp = hints[f.name]
            if is_dataclass(tp):
                walk(tp, prefix + (f.name,), prefixed or bool(meta.get("prefixed")))
                continue
            path = prefix + (f.name,)
            flag = meta.get("cli", "") or ("--" + "-".join(path).replace("_", "-")
                                           if prefixed else "")
            leaves.append(FlatField(path, flag, tp, _default_of(f),
                                    meta.get("help", ""), meta.get("choices"),
                                    dict(meta.get("bounds", {})), meta.get("allow_inf", False),
                                    meta.get("message"), meta.get("in_section")))

    walk(cls, ())
    counts: dict[str, int] = {}
    for leaf in leaves:
        counts[leaf.path[-1]] = counts.get(leaf.path[-1], 0) + 1
    for leaf in leaves:
        if not leaf.flag:
            name = leaf.path[-1] if counts[leaf.path[-1]] == 1 else "_".join(leaf.path)
            leaf.flag = "--" + name.replace("_", "-")
    return leaves


def fmt_number(x: float) -> str:
    return f"{x:g}"
