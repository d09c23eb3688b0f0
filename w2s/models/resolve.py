"""Turn any model name the user writes into one place to load it from.

``resolve_model(name)`` tries, in order:

1. a registry alias (``gpt2-large``; see :mod:`w2s.models.registry`),
2. an existing local directory (a ``save_pretrained`` checkpoint) or ``.gguf`` file,
3. a hub id (``org/name``),
4. a packaged offline model (``offline:smollm2-135m-instruct``, ``offline:gemma-3-270m``),
5. a tiny in-process model (``tiny:llama-2x64``), optionally pretrained on a project corpus
   (``tiny:llama-2x64+toy-sentiment``; see :mod:`w2s.tiny.corpus`),

and raises a one-line :class:`~w2s.errors.W2SError` with a suggestion for anything else.
Resolving never loads weights and never touches the network.

One fallback keeps recipes portable: with ``HF_HUB_OFFLINE=1``, an alias whose hub copy is not in
the local Hugging Face cache but whose packaged offline copy is installed resolves to the offline
copy (``source == "offline"``), so ``smollm2-135m-instruct`` works on a machine with no hub.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from w2s.errors import W2SError, did_you_mean
from w2s.models import offline as _offline
from w2s.models.registry import FAMILY_LORA_TARGETS, REGISTRY, ModelSpec, default_lr, get_spec
from w2s.models.tiny import CORPUS_VERSION, canonical, parse_tiny, tiny_param_count

SOURCES = ("alias", "local", "hub", "offline", "tiny")

MODEL_TYPE_FAMILY = {"gpt2": "gpt2", "opt": "opt", "llama": "llama", "qwen2": "qwen2",
                     "mistral": "mistral", "gemma": "gemma", "gemma2": "gemma",
                     "gemma3": "gemma", "gemma3_text": "gemma"}
"""transformers ``model_type`` -> registry family (for checkpoints that are not aliases)."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ResolvedModel:
    """Where a model name points.

    source: how it resolved (alias, local, hub, offline, tiny); location: what to load (a hub id
    for alias/hub, a path for local, the offline name for offline, ``<arch>-<L>x<H>`` for tiny);
    spec: its registry entry if any; size_b: parameters in billions (known or estimated from the
    config, None when unknown); family: architecture family when known (decides LoRA targets);
    note: why it resolved this way when that is not obvious (the offline fallback).
    """

    name: str
    source: str
    location: str
    spec: ModelSpec | None = None
    size_b: float | None = None
    family: str | None = None
    note: str = ""

    @property
    def default_lr(self) -> float:
        """The registry's learning rate, else one chosen by size (5e-5 below 0.7B, else 1e-5)."""
        return self.spec.default_lr if self.spec else default_lr(self.size_b)

    @property
    def lora_targets(self) -> list[str] | str:
        """The registry's (or family's) LoRA targets; ``"all-linear"`` for tiny models and
        unknown families (every linear layer except the output head)."""
        if self.spec:
            return list(self.spec.lora_targets)
        if self.source == "tiny":
            return "all-linear"
        return list(FAMILY_LORA_TARGETS.get(self.family or "", [])) or "all-linear"

    @property
    def chat(self) -> bool:
        """A chat model by the registry; tiny and offline-instruct models have chat templates."""
        if self.spec:
            return self.spec.chat
        return self.source == "tiny"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    values = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(v.strip().upper() in {"1", "ON", "YES", "TRUE"} for v in values)


def cached_config(repo_id: str) -> Path | None:
    """The hub repository's config.json in the local Hugging Face cache, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub library rejects is simply not cached
        return None
    return Path(found) if isinstance(found, str) else None


WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".gguf", ".model", ".txt", ".jinja")
"""Files of a local model folder whose size and time enter :func:`model_identity`."""


def model_identity(resolved: ResolvedModel) -> dict:
    """What names a model's WEIGHTS, for cache keys: its source and location plus what pins them
    (the hub revision in the local cache, the sizes and times of a local folder's files, the
    corpus version of a pretrained tiny model). A path alone is not enough: training another
    model into the same folder must not reuse results cached for the old one."""
    ident: dict = {"source": resolved.source, "location": resolved.location}
    if resolved.source == "tiny":
        ident["corpus_version"] = CORPUS_VERSION
    elif resolved.source == "local":
        folder = Path(resolved.location)
        files = sorted(folder.iterdir()) if folder.is_dir() else [folder]
        ident["files"] = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files
                          if f.is_file() and f.suffix in WEIGHT_SUFFIXES]
    elif resolved.source in ("alias", "hub"):
        config = cached_config(resolved.location)
        ident["revision"] = config.parent.name if config is not None else None
    return ident


def in_hf_cache(repo_id: str) -> bool:
    """True when the hub repository is in the local Hugging Face cache."""
    return cached_config(repo_id) is not None


def check_available(role: str, resolved: ResolvedModel) -> None:
    """A hub model that is not in the local cache while offline is refused now (one line
    naming the fix), not mid-run; ``role`` names it in the message (weak, strong, judge)."""
    if resolved.source in ("alias", "hub") and hub_offline() and not in_hf_cache(resolved.location):
        raise W2SError(f"the {role} model '{resolved.name}' ({resolved.location}) is not in the "
                       f"local Hugging Face cache and HF_HUB_OFFLINE=1; download it first "
                       f"(`huggingface-cli download {resolved.location}`) or pass a local folder")


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or name in (".", "..")
            or name.endswith(".gguf"))


def _config_facts(folder: str | Path) -> tuple[float | None, str | None]:
    """(size in billions, family) from a checkpoint's config.json, counted on the meta device."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(folder)
        family = MODEL_TYPE_FAMILY.get(getattr(config, "model_type", ""))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return sum(p.numel() for p in model.parameters()) / 1e9, family
    except Exception:  # an estimate only: an exotic config just leaves it unknown
        return None, None


def resolve_model(name: str) -> ResolvedModel:
    """Resolve a model name (alias, local path, hub id, ``offline:<name>``, ``tiny:<cfg>``)."""
    name = str(name).strip()
    spec = REGISTRY.get(name.lower())
    # 1. registry alias (with the offline fallback)
    if spec is not None:
        if (spec.offline and hub_offline() and not in_hf_cache(spec.hub_id)
                and _offline.is_installed(spec.offline)):
            return ResolvedModel(name, "offline", spec.offline, spec, spec.size_b, spec.family,
                                 note=f"{spec.hub_id} is not in the HF cache and HF_HUB_OFFLINE=1;"
                                      f" using the packaged offline copy offline:{spec.offline}")
        return ResolvedModel(name, "alias", spec.hub_id, spec, spec.size_b, spec.family)
    # 2. local directory or file
    path = Path(name).expanduser()
    if not name.startswith(("offline:", "tiny:")) and path.exists():
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise W2SError(f"directory {path} has no config.json; pass a folder written by "
                               "save_pretrained (model + tokenizer)")
            size_b, family = _config_facts(path)
            return ResolvedModel(name, "local", str(path.resolve()), None, size_b, family)
        if path.suffix != ".gguf":
            raise W2SError(f"{path} is a file but not a .gguf model; pass a checkpoint directory "
                           "(save_pretrained) or a .gguf file")
        return ResolvedModel(name, "local", str(path.resolve()))
    if _looks_like_path(name):
        raise W2SError(f"no such model directory or file: {path}; check the path")
    # 3. hub id
    if _HUB_ID.match(name):
        spec = get_spec(name)
        if spec is not None:
            return ResolvedModel(name, "hub", spec.hub_id, spec, spec.size_b, spec.family)
        config = cached_config(name)
        size_b, family = _config_facts(config.parent) if config else (None, None)
        return ResolvedModel(name, "hub", name, None, size_b, family)
    # 4. packaged offline model
    if name.startswith("offline:"):
        src = _offline.get_source(name)
        return ResolvedModel(name, "offline", src.name, get_spec(src.hub_id), src.size_b,
                             src.family)
    # 5. tiny in-process model
    if name.startswith("tiny:"):
        base = name[len("tiny:"):].split("+")[0]
        cfg = parse_tiny(base)
        location = canonical(str(cfg) + name[len("tiny:") + len(base):])
        return ResolvedModel(name, "tiny", location, None, tiny_param_count(str(cfg)) / 1e9,
                             cfg.arch)
    choices = [*REGISTRY, *(f"offline:{k}" for k in _offline.OFFLINE)]
    raise W2SError(f"unknown model '{name}'{did_you_mean(name, choices)}; run `w2s models` for the "
                   "registry, or pass a hub id (org/name), a local directory, offline:<name> or "
                   "tiny:<arch>-<layers>x<width>")


EXAMPLE_TINY = "tiny:llama-2x64"


def models_table() -> list[dict]:
    """One row per alias, per packaged offline model and an example tiny model (no network).

    ``where`` says how the model can be had on this machine: ``hf cache`` (in the local Hugging
    Face cache), ``w2s cache`` (offline copy already converted), ``offline package`` (installed,
    converted on first use), ``in-process`` (tiny), ``hub only``, or ``not installed`` for an
    offline model whose package is missing (loading it names the pip command).
    """

    def offline_where(name: str) -> str | None:
        if _offline.converted_dir(name) is not None:
            return "w2s cache"
        if _offline.is_installed(name):
            return "offline package"
        return None

    rows = []
    for spec in REGISTRY.values():
        where = "hf cache" if in_hf_cache(spec.hub_id) else None
        if where is None and spec.offline:
            where = offline_where(spec.offline)
        rows.append({"alias": spec.alias, "hub_id": spec.hub_id, "family": spec.family,
                     "size_b": spec.size_b, "default_lr": spec.default_lr,
                     "lora_targets": list(spec.lora_targets), "chat": spec.chat,
                     "where": where or "hub only"})
    for src in _offline.OFFLINE.values():
        rows.append({"alias": f"offline:{src.name}", "hub_id": src.hub_id, "family": src.family,
                     "size_b": src.size_b, "default_lr": default_lr(src.size_b),
                     "lora_targets": list(FAMILY_LORA_TARGETS[src.family]),
                     "chat": bool(get_spec(src.hub_id) and get_spec(src.hub_id).chat),
                     "where": offline_where(src.name) or "not installed"})
    tiny = resolve_model(EXAMPLE_TINY)
    rows.append({"alias": EXAMPLE_TINY, "hub_id": None, "family": tiny.family,
                 "size_b": round(tiny.size_b, 6), "default_lr": tiny.default_lr,
                 "lora_targets": tiny.lora_targets, "chat": True, "where": "in-process"})
    return rows
