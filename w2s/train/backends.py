"""The backends the training loop runs on: one small strategy per kind of launch.

The loop (:mod:`w2s.train.loop`) decides WHAT a step is (which examples, which micro-batches,
with which weights); a backend decides HOW the model is prepared, how a micro-batch's loss is
backpropagated, how gradients are clipped and the optimizer stepped, and how the trained state
is gathered, saved and loaded. Three of them, chosen by the launch (:func:`backend_for`):

- :class:`Plain`: one process, or DDP over several (accelerate's ``NO`` / ``MULTI_GPU`` /
  ``MULTI_CPU``). Every micro-batch but the step's last runs under ``no_sync`` so the gradients
  are all-reduced once per step.
- :class:`FSDP`: FSDP2 (``fully_shard``). The loop's model is sharded as a COPY, so parameters,
  gradients and optimizer state are split across processes while training; at the end every
  process gathers the trained weights into the caller's model, which stays a plain module.
- :class:`DeepSpeed`: the ZeRO engine driven by hand: told where each step's last micro-batch
  is, the loss passed unscaled (``scale_wrt_gas=False``), the engine's step (with its clipping
  at ``max_grad_norm``) taken after the last one. Also a copy, like FSDP.

Every backend saves checkpoints in one format (whole trainable tensors and optimizer state keyed
by parameter name, :mod:`w2s.train.checkpoint`), except DeepSpeed's optimizer partitions, which
its engine writes itself.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch

from w2s.errors import W2SError
from w2s.train.checkpoint import engine_staging, trainable
from w2s.train.launch import launch_kind


def backend_for(accelerator) -> Plain:
    """The backend of this process's launch."""
    kind = launch_kind(accelerator)
    return {"FSDP": FSDP, "DEEPSPEED": DeepSpeed}.get(kind, Plain)(accelerator, kind)


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a parameter: an FSDP2 shard (a DTensor) is gathered from every rank,
    so under FSDP every rank must call this, in the same order."""
    from torch.distributed.tensor import DTensor

    return p.full_tensor() if isinstance(p, DTensor) else p


class Plain:
    """One process, or data parallelism (DDP): the model is trained in place."""

    sharded = False
    writes_engine_state = False  # DeepSpeed's engine saves its own optimizer partitions

    def __init__(self, accelerator, kind: str):
        self.accelerator = accelerator
        self.kind = kind
        self.wrapped = None  # what forward passes go through (the DDP wrapper, the engine)
        self.model = None    # the module being trained (the caller's, or a sharded copy)

    # ---- set up --------------------------------------------------------------------------
    def check(self, model: torch.nn.Module, checkpoint: Path | None) -> None:
        """Refuse a model or a checkpoint this backend cannot train or resume."""
        if checkpoint is not None and (checkpoint / "deepspeed").is_dir() != \
                self.writes_engine_state:
            theirs = "a DeepSpeed" if not self.writes_engine_state else "a non-DeepSpeed"
            raise W2SError(f"checkpoint {checkpoint} was written by {theirs} launch; resume it "
                           f"with that kind of launch, or delete {checkpoint.parent} to start "
                           "over")

    def copy_for_training(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the loop trains: the caller's own (sharding backends: a copy)."""
        return model

    def configure(self, plan, config) -> None:
        """Anything the launch must know about the step's arithmetic before ``prepare``."""

    def prepare(self, model: torch.nn.Module, optimizer):
        """Wrap the model and optimizer for the launch; returns the optimizer to step."""
        self.wrapped, optimizer = self.accelerator.prepare(model, optimizer)
        self.model = self.accelerator.unwrap_model(self.wrapped)
        return optimizer

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters as the optimizer sees them (the shards, when sharded)."""
        return list(trainable(self.model).values())

    # ---- one step ------------------------------------------------------------------------
    def backward(self, loss_of, weight: float, last: bool):
        """Run ``loss_of(wrapped) -> (losses [b], extras)`` and backpropagate ``sum * weight``;
        gradients are synchronised across processes on the step's ``last`` micro-batch only."""
        accelerator = self.accelerator
        with nullcontext() if last else accelerator.no_sync(self.wrapped):
            losses, extras = loss_of(self.wrapped)
            accelerator.backward(losses.sum() * weight)
        return losses, extras

    def clip(self, max_norm: float):
        """Clip the global gradient norm to ``max_norm``; returns the norm before clipping."""
        return self.accelerator.clip_grad_norm_(self.parameters(), max_norm)

    # ---- state ---------------------------------------------------------------------------
    def gather(self, optimizer, main: bool) -> tuple[dict, dict]:
        """``(trainable weights, optimizer state)`` on CPU, keyed by parameter name. Every rank
        calls this (sharded launches gather); only the main process gets them (the others get
        empty dicts)."""
        weights = {name: full.detach().cpu().contiguous().clone()
                   for name, full in self.full_trainable() if main}
        if not main:
            return weights, {}
        names = list(trainable(self.model))  # the optimizer's parameters, in this order
        state = optimizer.state_dict()
        return weights, {"state": {names[i]: v for i, v in state["state"].items()},
                         "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                                          for g in state["param_groups"]]}

    def full_trainable(self):
        """``(name, whole tensor)`` of each trainable parameter, gathered one at a time from its
        shards when sharded (a collective then: every rank iterates, in the same order)."""
        for name, p in trainable(self.model).items():
            yield name, full_tensor(p)

    def save_engine(self, checkpoint_dir: Path, step: int) -> Path | None:
        """DeepSpeed only: every rank writes its partitions; the folder goes into the
        checkpoint in place of ``optimizer.pt``."""
        return None

    def load_state(self, path: Path, optimizer) -> None:
        """Load a checkpoint's optimizer state (the weights are loaded before ``prepare``)."""
        saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        groups = saved["param_groups"]
        if groups and groups[0]["params"] and isinstance(groups[0]["params"][0], int):
            optimizer.load_state_dict(saved)  # keyed by position: an older w2s checkpoint
            return
        index = {name: i for i, name in enumerate(trainable(self.model))}
        optimizer.load_state_dict({
            "state": {index[n]: v for n, v in saved["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                             for g in saved["param_groups"]]})

    def finish(self, target: torch.nn.Module, device) -> None:
        """Leave the trained weights in the caller's ``target`` (here: trained in place)."""


class FSDP(Plain):
    """FSDP2: a sharded copy is trained; the caller's model gets the gathered weights."""

    sharded = True

    def check(self, model, checkpoint):
        _refuse_quantized(model, "FSDP")
        super().check(model, checkpoint)

    def copy_for_training(self, model):
        # The copy is whole only until accelerate shards it (a second model's memory for a
        # moment); then each rank keeps a 1/world_size share of it, its gradients and the
        # optimizer state, next to the whole model it loaded (see recipes/accelerate/fsdp.yaml).
        return copy.deepcopy(model)

    def configure(self, plan, config):
        # accelerate's FSDP plugin keeps the block classes of the first model it wrapped and
        # refuses a second model without them (a reward head after a language model); w2s
        # trains several models in one process, so each starts from the launch's own settings.
        plugin = self.accelerator.state.fsdp_plugin
        if isinstance(plugin.auto_wrap_policy, functools.partial):
            plugin.auto_wrap_policy = plugin.auto_wrap_policy.func
        names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").strip()
        plugin.transformer_cls_names_to_wrap = names.split(",") if names else None

    def clip(self, max_norm):
        # accelerate clips under FSDP only when every parameter trains: clip the shards here
        self.accelerator.unscale_gradients()
        return torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)

    def gather(self, optimizer, main):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        weights = {name: full.detach().cpu().contiguous().clone()
                   for name, full in self.full_trainable() if main}
        return weights, get_optimizer_state_dict(
            self.model, optimizer,
            options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_state(self, path, optimizer):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        set_optimizer_state_dict(self.model, optimizer, optim_state_dict=saved,
                                 options=StateDictOptions(full_state_dict=True))

    def finish(self, target, device):
        """Every rank gathers each trained tensor into the caller's model."""
        into = trainable(target)
        with torch.no_grad():
            for name, full in self.full_trainable():
                into[name].copy_(full)
        self.model = self.wrapped = None
        if any(p.device != device for p in target.parameters()):
            target.to(device)


class DeepSpeed(FSDP):
    """DeepSpeed ZeRO: the engine trains a (partitioned) copy and keeps its own optimizer."""

    writes_engine_state = True

    def check(self, model, checkpoint):
        _refuse_quantized(model, "DEEPSPEED")
        Plain.check(self, model, checkpoint)

    def configure(self, plan, config):
        """The engine's batch arithmetic and clipping come from the TrainConfig, not from the
        accelerate config file: one micro-batch per backward, ``plan.accum`` per step."""
        clip = config.max_grad_norm
        self.accelerator.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=plan.micro, gradient_accumulation_steps=plan.accum,
            train_batch_size=plan.micro * plan.accum * plan.world,
            gradient_clipping=0.0 if clip is None or math.isinf(clip) else clip)

    def prepare(self, model, optimizer):
        optimizer = super().prepare(model, optimizer)
        # accelerate copies the engine's accumulation here; the loop accumulates itself
        self.accelerator.gradient_accumulation_steps = 1
        return optimizer

    def backward(self, loss_of, weight, last):
        engine = self.wrapped  # told where the step ends, and not to rescale the loss
        engine.set_gradient_accumulation_boundary(last)
        losses, extras = loss_of(engine)
        engine.backward(losses.sum() * weight, scale_wrt_gas=False)
        if last:
            engine.step()  # clips to max_grad_norm and steps the optimizer
        return losses, extras

    def clip(self, max_norm):
        return self.wrapped.get_global_grad_norm()  # clipped in the engine's step

    def full_trainable(self):
        import deepspeed

        for name, p in trainable(self.model).items():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                yield name, p.data.detach().clone()

    def gather(self, optimizer, main):
        weights = {name: full.detach().cpu().contiguous().clone()
                   for name, full in self.full_trainable() if main}
        return weights, {}  # the engine writes its optimizer state itself (save_engine)

    def save_engine(self, checkpoint_dir, step):
        engine_dir = engine_staging(checkpoint_dir, step)
        if self.accelerator.is_main_process:
            shutil.rmtree(engine_dir, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.wrapped.save_checkpoint(str(engine_dir), tag="state", save_latest=False)
        self.accelerator.wait_for_everyone()
        return engine_dir

    def load_state(self, path, optimizer):
        # the engine's own state: optimizer partitions and fp32 weights
        self.wrapped.load_checkpoint(str(path / "deepspeed"), tag="state",
                                     load_module_strict=False, load_lr_scheduler_states=False)


def _refuse_quantized(model: torch.nn.Module, kind: str) -> None:
    if any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters()):
        raise W2SError(f"w2s does not train a bitsandbytes-quantized model under {kind}; "
                       "launch with recipes/accelerate/ddp.yaml (LoRA on a 4-bit model fits "
                       "one GPU per process)")
