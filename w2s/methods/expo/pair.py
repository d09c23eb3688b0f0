"""Which two checkpoints ``w2s expo`` extrapolates (torch-free): ``--aligned`` / ``--sft`` as
given, or read from a finished run directory (``--from-run``).

- a ``w2s wspo`` run: aligned = ``<run>/model`` (the WSPO-trained strong model, LoRA merged;
  written with ``save_model``), sft = its config's ``strong`` (the model WSPO started from, its
  reference pi_ref);
- a ``w2s macpo`` run: the student's positive LoRA agent, aligned =
  ``iter<T>/adapters/student-pos.safetensors`` (the last iteration), sft =
  ``init/adapters/student-pos.safetensors`` (its SFT on the teachers' answers, the baseline of
  every MACPO win rate), over the base model ``strong``; scale lora_alpha / lora_r;
- any other (DPO) run: aligned = ``<run>/model``, sft = the config's ``sft``, ``reference`` or
  ``strong`` (the first that is set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from w2s.errors import W2SError


@dataclass(frozen=True)
class Pair:
    """kind ``full`` (two model names or folders) or ``adapter`` (two adapter files over
    ``base``, merged with ``scale``); ``source`` says where the pair came from."""

    kind: str
    aligned: str
    sft: str
    base: str | None = None
    scale: float = 1.0
    source: str = "flags"
    seed: int | None = None  # the run's seed: what a random tiny start was initialised with


def resolve_pair(aligned: str | None, sft: str | None, from_run: str | None) -> Pair:
    """The pair the flags name; one-line :class:`W2SError` when there is none."""
    if from_run:
        if aligned or sft:
            raise W2SError("give either --from-run or --aligned/--sft, not both")
        return pair_from_run(Path(from_run))
    if not aligned or not sft:
        raise W2SError("name the pair: --aligned MODEL and --sft MODEL (its SFT start), or "
                       "--from-run RUN_DIR of a finished wspo, macpo or DPO run")
    if aligned == sft:
        raise W2SError(f"--aligned and --sft are the same model ({aligned}); nothing to "
                       "extrapolate")
    return Pair("full", aligned, sft)


def _config(run: Path) -> dict:
    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        raise W2SError(f"{run} is not a run directory (no config.yaml); pass the folder of a "
                       "finished wspo, macpo or DPO run")
    return yaml.safe_load(path.read_text()) or {}


def pair_from_run(run: Path) -> Pair:
    cfg = _config(run)
    if not (run / "metrics.json").is_file():
        raise W2SError(f"run {run} has not finished (no metrics.json); finish it first")
    method = cfg.get("method")
    where = f"{method} run {run}"
    if method == "macpo":
        last = max((int(p.name[4:]) for p in run.glob("iter*") if p.name[4:].isdigit()),
                   default=None)
        aligned = run / f"iter{last}/adapters/student-pos.safetensors" if last else None
        sft = run / "init/adapters/student-pos.safetensors"
        if aligned is None or not aligned.is_file() or not sft.is_file():
            raise W2SError(f"{where} saved no student adapters (iter<T>/adapters/student-pos."
                           "safetensors and init/adapters/student-pos.safetensors)")
        scale = float(cfg.get("lora_alpha", 16)) / float(cfg.get("lora_r", 8))
        return Pair("adapter", str(aligned), str(sft), base=str(cfg["strong"]), scale=scale,
                    seed=cfg.get("seed"), source=f"{where}: the student's adapter after iteration {last} vs after "
                           "its SFT")
    if not (run / "model" / "config.json").is_file():
        fix = " (rerun it with --save-model)" if method == "wspo" else ""
        raise W2SError(f"{where} saved no model (<run>/model){fix}; nothing to extrapolate")
    start = next((cfg[k] for k in ("sft", "reference", "strong") if cfg.get(k)), None)
    if start is None:
        raise W2SError(f"{where} names no starting model (sft, reference or strong in "
                       "config.yaml); give --aligned and --sft instead")
    return Pair("full", str(run / "model"), str(start), seed=cfg.get("seed"),
                source=f"{where}: <run>/model vs its start {start}")
