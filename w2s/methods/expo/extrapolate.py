"""The ExPO update, tensor by tensor: theta = theta_aligned + alpha (theta_aligned - theta_sft).

Two ways in, one model object in memory:

- full models: :func:`extrapolate_into` writes ``a + alpha (a - s)`` into ONE loaded model's
  parameters in place, reading the aligned tensor ``a`` and the SFT tensor ``s`` one at a time
  from their safetensors files (:class:`TensorFiles`, ``safe_open``); never two full state
  dicts, let alone three models;
- LoRA adapter pairs over one base (e.g. a MACPO student's adapters before and after its
  iterations): :func:`extrapolate_adapters_into` extrapolates the MERGED weights.
  ``W_a = W0 + s B_a A_a`` and ``W_s = W0 + s B_s A_s`` (``s`` = lora_alpha / r) give
  ``W = W_a + alpha (W_a - W_s) = W0 + s [(1 + alpha) B_a A_a - alpha B_s A_s]``: each adapted
  module's base weight plus that low-rank combination, exact; the two adapters may differ in
  rank (only their products enter), and weights no adapter touches are W0 (extrapolating equal
  tensors leaves them equal).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from w2s.errors import W2SError


def extrapolate(aligned, sft, alpha: float):
    """``aligned + alpha (aligned - sft)``: one tensor, or every key of two mappings (the same
    keys and shapes, else a one-line :class:`W2SError`). Floating tensors are computed in fp32
    and returned in ``aligned``'s dtype; integer buffers are taken from ``aligned``."""
    if isinstance(aligned, Mapping):
        check_same_layout({k: tuple(v.shape) for k, v in aligned.items()},
                          {k: tuple(v.shape) for k, v in sft.items()})
        return {k: extrapolate(v, sft[k], alpha) for k, v in aligned.items()}
    if tuple(aligned.shape) != tuple(sft.shape):
        raise W2SError(f"aligned and sft tensors differ in shape: {tuple(aligned.shape)} vs "
                       f"{tuple(sft.shape)}")
    if not aligned.is_floating_point():
        return aligned.clone()
    a = aligned.float()
    return (a + alpha * (a - sft.float())).to(aligned.dtype)


def check_same_layout(aligned: Mapping[str, tuple], sft: Mapping[str, tuple],
                      what: str = "the aligned and the sft model") -> None:
    """One line when two ``{name: shape}`` tables differ: a name only one has, or a shape."""
    only = sorted(set(aligned) ^ set(sft))
    if only:
        side = "aligned" if only[0] in aligned else "sft"
        raise W2SError(f"{what} have different architectures: {only[0]!r} is only in the "
                       f"{side} one ({len(only)} tensor(s) differ); extrapolate a model from "
                       "its own SFT start")
    for name, shape in aligned.items():
        if tuple(shape) != tuple(sft[name]):
            raise W2SError(f"{what} have different shapes at {name!r}: {tuple(shape)} vs "
                           f"{tuple(sft[name])}; extrapolate a model from its own SFT start")


class TensorFiles:
    """The tensors of a safetensors checkpoint (one file, a sharded folder, or an adapter
    file), read ONE at a time through ``safe_open``; ``reads`` counts :meth:`get` calls."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        path = Path(path)
        files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
        if not files:
            raise W2SError(f"{path} holds no .safetensors weights; save the model with "
                           "save_pretrained (safe_serialization) first")
        self.path = path
        self._handles = {f: safe_open(str(f), framework="pt") for f in files}
        self._where: dict[str, Path] = {}
        for f, handle in self._handles.items():
            for key in handle.keys():
                self._where[key] = f
        self.reads = 0

    def keys(self) -> list[str]:
        return list(self._where)

    def shapes(self) -> dict[str, tuple]:
        return {k: tuple(self._handles[f].get_slice(k).get_shape())
                for k, f in self._where.items()}

    def get(self, key: str) -> torch.Tensor:
        self.reads += 1
        return self._handles[self._where[key]].get_tensor(key)


def model_config(folder: str | Path) -> dict:
    """A checkpoint folder's config.json (empty when it has none)."""
    path = Path(folder) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def check_full_pair(aligned: TensorFiles, sft: TensorFiles) -> None:
    """Refuse, in one line and before any model is loaded, two checkpoints that cannot be
    extrapolated: other model types or hidden sizes, other tensor names or shapes."""
    ca, cs = model_config(aligned.path), model_config(sft.path)
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        if key in ca and key in cs and ca[key] != cs[key]:
            raise W2SError(f"the aligned and the sft model have different architectures: "
                           f"{key} {ca[key]} vs {cs[key]}; extrapolate a model from its own "
                           "SFT start")
    check_same_layout(aligned.shapes(), sft.shapes())


def _targets(model, keys) -> dict[str, torch.Tensor]:
    state = model.state_dict()  # tensors sharing the parameters' storage
    missing = [k for k in keys if k not in state]
    if missing:
        raise W2SError(f"the loaded model has no tensor {missing[0]!r} of the checkpoint "
                       f"({len(missing)} missing); load the aligned model's own class")
    return state


@torch.no_grad()
def extrapolate_into(model, aligned: TensorFiles, sft: TensorFiles, alpha: float) -> None:
    """Write ``a + alpha (a - s)`` into ``model`` in place, tensor by tensor: each aligned and
    sft tensor is read once and dropped before the next (alpha 0 restores the aligned model)."""
    state = _targets(model, aligned.keys())
    for key in aligned.keys():
        target = state[key]
        value = extrapolate(aligned.get(key), sft.get(key), alpha)
        target.copy_(value.to(device=target.device, dtype=target.dtype))


ADAPTER_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def adapter_modules(adapter: Mapping[str, tuple] | TensorFiles) -> dict[str, tuple[str, str]]:
    """``{base weight name: (lora_A key, lora_B key)}`` of a peft adapter state dict (keys like
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``)."""
    keys = adapter.keys()
    out = {}
    for key in keys:
        if key.endswith(".lora_A.weight"):
            module = key[:-len(".lora_A.weight")]
            b = module + ".lora_B.weight"
            if b not in keys:
                raise W2SError(f"adapter has {key} but no {b}")
            name = module[len("base_model.model."):] if module.startswith(
                "base_model.model.") else module
            out[name + ".weight"] = (key, b)
    if not out:
        raise W2SError("the adapter file holds no LoRA A/B weights")
    return out


def check_adapter_pair(base: TensorFiles, aligned: TensorFiles, sft: TensorFiles) -> None:
    """Both adapters adapt the same modules of ``base``, with matching outer shapes."""
    ma, ms = adapter_modules(aligned), adapter_modules(sft)
    if set(ma) != set(ms):
        only = sorted(set(ma) ^ set(ms))[0]
        raise W2SError(f"the aligned and the sft adapter adapt different modules ({only!r}); "
                       "extrapolate two adapters of one LoRA setup")
    shapes, sa, ss = base.shapes(), aligned.shapes(), sft.shapes()
    for weight, (a_key, b_key) in ma.items():
        if weight not in shapes:
            raise W2SError(f"the adapters adapt {weight!r}, which the base model lacks")
        out_in = (ss[ms[weight][1]][0], ss[ms[weight][0]][1])
        if (sa[b_key][0], sa[a_key][1]) != out_in:
            raise W2SError(f"the aligned and the sft adapter have different shapes at {weight!r}")


def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float, shape) -> torch.Tensor:
    """``scale * B @ A`` in fp32, laid out like the base weight (transposed for Conv1D)."""
    delta = scale * (b.float() @ a.float())
    if tuple(delta.shape) != tuple(shape) and tuple(delta.T.shape) == tuple(shape):
        delta = delta.T
    return delta


@torch.no_grad()
def extrapolate_adapters_into(model, base: TensorFiles, aligned: TensorFiles, sft: TensorFiles,
                              scale: float, alpha: float) -> None:
    """Write the extrapolated merged model into ``model`` (a plain base model) in place: every
    base tensor, then ``+ scale [(1 + alpha) B_a A_a - alpha B_s A_s]`` on each adapted module
    (one LoRA setup: the same ``scale`` for both adapters)."""
    state = _targets(model, base.keys())
    for key in base.keys():
        state[key].copy_(base.get(key).to(device=state[key].device, dtype=state[key].dtype))
    ma, ms = adapter_modules(aligned), adapter_modules(sft)
    for weight, (a_key, b_key) in ma.items():
        target = state[weight]
        da = lora_delta(aligned.get(a_key), aligned.get(b_key), scale, target.shape)
        ds = lora_delta(sft.get(ms[weight][0]), sft.get(ms[weight][1]), scale, target.shape)
        target.add_(((1 + alpha) * da - alpha * ds).to(device=target.device,
                                                       dtype=target.dtype))
