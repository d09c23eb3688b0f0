"""Configs: dataclasses with help text and bounds, filled from a recipe YAML, overridden by CLI
flags, checked by one :func:`validate`.

Every command's options are one dataclass. A field is declared with :func:`option`::

    @config_class
    class GeneralizeConfig:
        weak: str = option("gpt2", "weak model: registry alias, local path, hub id or tiny:...")
        loss: str = option("xent", "training loss for the strong student",
                           choices=["xent", "logconf", "product"])
        aux_alpha: float = option(0.5, "logconf: final weight", min=0, max=1)
        weak_train: StageTrain = section(StageTrain, "fine-tuning of the weak models")
        runtime: Runtime = section(Runtime, "device, dtype, seed, run dir", inline=True)

Precedence, lowest first: the dataclass defaults, the recipe (``--recipe X.yaml``), CLI flags.
Unknown keys in a recipe and unknown flags are errors that name the key and the closest valid
one (a misspelled key silently ignored is how runs go wrong: trl PR #3543).

Sections. A nested dataclass is a section: a mapping in the recipe (``weak_train: {lr: 1e-5}``)
and, on the command line, flags named by the leaf (``--lr``) unless two sections share a leaf
name, then ``--weak-train-lr``. An INLINE section (``section(..., inline=True)``) is a group of
settings that several methods share (:class:`Runtime`, :class:`Sweep`, :class:`Lora`,
:class:`Judging`, :class:`Sampling`): its fields are spliced into the parent class by
:func:`config_class`, so they live at the parent level of the recipe and of config.yaml
(``seed: 1``, ``--seed``) exactly as if they were declared there, and ``cfg.seed`` is a plain
dataclass field. ``cfg.runtime`` is a live view of those fields (``cfg.runtime.seed`` reads and
writes ``cfg.seed``) that also has the section's methods (``cfg.sampling.sampling_config()``).

Bounds and validation. ``option(..., min=0, max=1)`` (inclusive), ``above=0`` / ``below=1``
(strict) declare a number's range; float fields must be finite (no NaN, no inf) unless declared
with ``allow_inf=True``. :func:`validate` checks every leaf (types, choices, finiteness, bounds)
with one-line :class:`W2SError`s that name the flag, the value and the range (``--lr must be > 0
and finite, got nan``), then runs the ``check()`` method of each section and of the config class
itself (the cross-field rules: "these two precisions must match"). :func:`build_config` calls
it, and every method's own validation calls it first, so a config built in Python is held to the
same rules as one built from a recipe.

The resolved config is saved in each run directory (``config.yaml``) and is itself a valid recipe.

Two modules: :mod:`w2s.config.schema` declares configs (:func:`option`, :func:`section`,
:func:`config_class`, :func:`derive`) and reads them back as flat leaves (:func:`flat_fields`,
:func:`coerce`); :mod:`w2s.config.build` checks them (:func:`validate`) and builds them from
recipes and flags (:func:`build_config`, :func:`config_to_dict`).
"""

from dataclasses import dataclass, field

from w2s.config.build import build_config, config_to_dict, load_recipe, validate
from w2s.config.schema import (
    FlatField,
    coerce,
    comma_list,
    config_class,
    derive,
    flat_fields,
    option,
    section,
)

__all__ = ["comma_list", "option", "section", "config_class", "derive", "validate", "load_recipe",
           "build_config", "config_to_dict", "flat_fields", "FlatField", "coerce", "dataclass",
           "field"]
