"""Resumable checkpoints of the training loop: what one holds, how it is written atomically,
and how a resumed training checks that it continues the same setup.

A checkpoint folder holds ``latest`` (naming the current checkpoint) and that one checkpoint;
see :func:`read_checkpoint` for its files. The trainable weights and the optimizer state are
stored keyed by parameter name, whole (gathered from their shards by the backend,
:mod:`w2s.train.backends`), so a training checkpointed under DDP resumes under FSDP and back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from w2s.errors import W2SError
from w2s.runs import atomic_write_text, content_hash, write_json
from w2s.train.config import RESUME_FREE, TrainConfig


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def fingerprint(config: TrainConfig, n: int, model: torch.nn.Module) -> dict:
    """What must match for a checkpoint to be resumed: data size, config, trainable tensors."""
    cfg = {k: v for k, v in dataclasses.asdict(config).items() if k not in RESUME_FREE}
    shapes = {name: list(p.shape) for name, p in trainable(model).items()}
    return {"n_examples": n, "config": cfg, "trainable": content_hash(shapes)}


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(checkpoint_dir: str | Path) -> tuple[Path, dict] | None:
    """``(path, trainer_state)`` of the latest checkpoint in ``checkpoint_dir``, or None.

    The directory holds ``latest`` (a text file naming the current checkpoint) and that one
    checkpoint directory, ``step-00000006`` (``-done`` when training finished)::

        trainable.safetensors   the trainable parameters (requires_grad) only, by name
        optimizer.pt            optimizer state, keyed by parameter name (DDP and FSDP alike)
        state.pt                scheduler state_dict and RNG states (python, numpy, torch)
        trainer_state.json      step, total_steps, examples_seen, losses, done, fingerprint,
                                config, world_size, global_batch, elapsed_s, time
    """
    pointer = Path(checkpoint_dir) / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        raise W2SError(f"checkpoint {path} named by {pointer} is missing; delete {checkpoint_dir} "
                       "to start over")
    return path, json.loads(state_file.read_text())


def engine_staging(checkpoint_dir: Path, step: int) -> Path:
    """Where every rank writes its part of DeepSpeed's engine state before the checkpoint."""
    return checkpoint_dir / f".engine-step-{step:08d}"


def save_checkpoint(checkpoint_dir: Path, weights: dict, optimizer_state: dict, scheduler,
                     state: dict, engine_dir: Path | None = None) -> Path:
    """Write a checkpoint next to the old one, point ``latest`` at it, then delete the old one.

    Each step is atomic (a temp dir renamed into place; ``latest`` rewritten atomically), so a
    kill at any moment leaves ``latest`` naming a complete checkpoint. ``engine_dir``: the
    DeepSpeed engine's own state (written by every rank), moved in as ``deepspeed/`` in place
    of ``optimizer.pt``.
    """
    from safetensors.torch import save_file

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:08d}" + ("-done" if state["done"] else "")
    tmp = Path(tempfile.mkdtemp(dir=checkpoint_dir, prefix=f".tmp-{name}-"))
    try:
        save_file(weights, str(tmp / "trainable.safetensors"))
        if engine_dir is not None:
            os.replace(engine_dir, tmp / "deepspeed")
        else:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save({"scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / "state.pt")
        write_json(tmp / "trainer_state.json", state)
        final = checkpoint_dir / name
        if final.exists():  # a leftover that `latest` does not name (we never save twice)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(checkpoint_dir / "latest", name + "\n")
    for old in checkpoint_dir.iterdir():  # keep only the latest (and what is not ours)
        if old.name != name and old.is_dir() and old.name.startswith(
                ("step-", ".tmp-step-", ".engine-step-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(path / "trainable.safetensors"))
    params = trainable(model)
    if set(saved) != set(params):
        raise W2SError(f"checkpoint {path} holds other trainable tensors than this model; "
                       "delete it to start over")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])


def load_trained(model: torch.nn.Module, checkpoint_dir: str | Path) -> dict:
    """Load the trainable weights of the latest checkpoint into ``model``; its trainer state."""
    found = read_checkpoint(checkpoint_dir)
    if found is None:
        raise W2SError(f"no checkpoint in {checkpoint_dir}")
    load_weights(model, found[0])
    return found[1]


def check_fingerprint(path: Path, saved: dict, now: dict) -> None:
    if saved == now:
        return
    diffs = []
    if saved.get("n_examples") != now["n_examples"]:
        diffs.append(f"{saved.get('n_examples')} examples, now {now['n_examples']}")
    for key, value in now["config"].items():
        old = saved.get("config", {}).get(key)
        if old != value:
            diffs.append(f"{key}={old!r}, now {value!r}")
    if saved.get("trainable") != now["trainable"]:
        diffs.append("other trainable parameters")
    raise W2SError(f"checkpoint {path} was made with another setup ({'; '.join(diffs)}); "
                   f"restore those settings to resume, or delete {path.parent} to start over")


# --------------------------------------------------------------------------------------------
# the loop
