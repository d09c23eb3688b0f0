"""The one training loop every w2s method trains through.

A method brings three things: a list of ``examples`` (anything), a ``collate`` that turns a list
of them into a batch (a dict of tensors), and a ``loss_fn(model, batch)`` that returns ONE LOSS
PER EXAMPLE (a ``[b]`` tensor, or ``{"loss": [b] tensor, **scalar_metrics}``). The loop does
the rest, the same way for classifiers, SFT, DPO, reward models and the rest::

    result = train(model, examples, loss_fn=my_loss, collate=my_collate,
                   config=TrainConfig(lr=1e-4, batch_size=32, micro_batch_size=8),
                   checkpoint_dir=run.path / "train")

What one optimizer step is
--------------------------
Each epoch visits the examples in a seeded permutation (``seed + epoch``) that does not depend on
the number of processes. Optimizer step ``s`` takes the next ``batch_size`` examples of it (the
last step of an epoch takes what is left: no data is dropped). Those ``m`` examples are dealt
out to the ``world_size`` processes (rank ``r`` takes every ``world_size``-th one, starting at
``r``), and each process runs them through in micro-batches of ``micro_batch_size``. Every
micro-batch contributes ``sum(per-example losses) * world_size / m`` to the backward pass; DDP
averages gradients over processes (divides by ``world_size``), so the gradient of the step is
exactly that of ``mean over the m examples``. Hence the same ``batch_size`` gives the same
training (up to float rounding) on 1 or 8 GPUs and with any micro-batch size: the global batch
never silently depends on the GPU count (alignment-handbook #44), and changing gradient
accumulation does not change results (alignment-handbook #124).

Under FSDP and DeepSpeed (``accelerate launch --config_file recipes/accelerate/fsdp.yaml`` or
``deepspeed-zero3.yaml``) the same holds. The loop shards a COPY of the model, so parameters,
gradients and optimizer state are split across processes while training, and at the end every
process gathers the trained weights into the caller's model, which stays a plain module:
whatever a method does with it afterwards needs no collectives. FSDP2 averages the sharded
gradients like DDP. DeepSpeed's engine is driven by hand: told where each step's last
micro-batch is, the loss passed unscaled (``scale_wrt_gas=False``), the engine's step (with its
clipping at ``max_grad_norm``) taken after the last one.

Resuming
--------
With a ``checkpoint_dir``, the loop saves a checkpoint every ``checkpoint_every`` optimizer steps
(0: at the end of every epoch) and at the end: trainable parameters, optimizer and scheduler
state, RNG states, the step, the losses so far and a fingerprint of the setup. Calling
:func:`train` again with the same arguments (what a re-run after a crash or a kill does) finds
it, checks the fingerprint, and continues from that step; data order is a pure function of the
step, so the already-seen examples are skipped exactly. The result equals an uninterrupted run
(bitwise on CPU). Once training finished the checkpoint says ``done`` and :func:`train` just
loads the final weights and returns.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import datetime as _dt
import functools
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from w2s.errors import W2SError, did_you_mean
from w2s.progress import Bar, progress_enabled
from w2s.runs import atomic_write_text, content_hash, write_json

__all__ = ["TrainConfig", "TrainResult", "train", "lr_lambda", "make_accelerator", "end_launch",
           "process_precision", "unwrap", "read_checkpoint", "load_trained"]

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("no", "bf16", "fp16")
TRACKERS = ("none", "tensorboard", "wandb")

# Settings that do not change what is learned (or only by float rounding): a run may be resumed
# with other values, e.g. on a machine with a different number of GPUs and micro-batch size.
RESUME_FREE = ("micro_batch_size", "log_every", "checkpoint_every", "gradient_checkpointing",
               "report_to")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every method (the ``train:`` section of a recipe)."""

    lr: float = field(default=1e-5, metadata={"help": "peak learning rate"})
    epochs: float = field(default=1.0, metadata={
        "help": "passes over the training examples; fractions allowed (rounded up to whole "
                "optimizer steps)"})
    max_steps: int | None = field(default=None, metadata={
        "help": "number of optimizer steps; overrides --epochs when set"})
    batch_size: int = field(default=32, metadata={
        "help": "GLOBAL batch: examples per optimizer step, the same whatever the number of "
                "processes"})
    micro_batch_size: int | None = field(default=8, metadata={
        "help": "examples per forward pass on one device; gradient accumulation = batch_size / "
                "(micro_batch_size x processes), which must be a whole number; none = the "
                "global batch split evenly over the processes (no accumulation)"})
    optimizer: str = field(default="adamw", metadata={
        "help": "optimizer over the trainable parameters", "choices": list(OPTIMIZERS)})
    weight_decay: float = field(default=0.0, metadata={
        "help": "decoupled (adamw) or L2 (adam, sgd) weight decay"})
    scheduler: str = field(default="cosine", metadata={
        "help": "learning-rate schedule after warm-up: cosine (to 0), linear (to 0) or constant",
        "choices": list(SCHEDULERS)})
    warmup_ratio: float = field(default=0.0, metadata={
        "help": "fraction of the optimizer steps over which the lr ramps up linearly"})
    max_grad_norm: float | None = field(default=1.0, metadata={
        "help": "clip the global gradient norm to this; none to disable"})
    mixed_precision: str = field(default="no", metadata={
        "help": "autocast precision passed to accelerate (one value per process)",
        "choices": list(PRECISIONS)})
    seed: int = field(default=0, metadata={"help": "seed of data order, dropout and init noise"})
    log_every: int = field(default=1, metadata={"help": "log a record every N optimizer steps"})
    checkpoint_every: int = field(default=0, metadata={
        "help": "save a resumable checkpoint every N optimizer steps; 0 = at the end of each "
                "epoch (and always at the end)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass: less memory, ~30% slower"})
    report_to: str = field(default="none", metadata={
        "help": "also send the logged records to tensorboard or wandb (via accelerate)",
        "choices": list(TRACKERS)})

    def validate(self) -> None:
        """Raise :class:`W2SError` naming the first bad value."""
        for key, allowed in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS),
                             ("mixed_precision", PRECISIONS), ("report_to", TRACKERS)):
            value = getattr(self, key)
            if value not in allowed:
                raise W2SError(f"{key} must be one of {list(allowed)}, got {value!r}"
                               f"{did_you_mean(value, allowed)}")
        positive = {"batch_size": self.batch_size, "log_every": self.log_every}
        if self.micro_batch_size is not None:
            positive["micro_batch_size"] = self.micro_batch_size
        if self.max_steps is not None:
            positive["max_steps"] = self.max_steps
        for key, value in positive.items():
            if value < 1:
                raise W2SError(f"{key} must be at least 1, got {value}")
        if self.max_steps is None and not self.epochs > 0:
            raise W2SError(f"epochs must be > 0 (or set max_steps), got {self.epochs}")
        if self.lr < 0 or self.weight_decay < 0:
            raise W2SError("lr and weight_decay must be >= 0")
        if not 0 <= self.warmup_ratio < 1:
            raise W2SError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.checkpoint_every < 0:
            raise W2SError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise W2SError("max_grad_norm must be > 0 (or none to disable clipping)")


@dataclass
class TrainResult:
    """What a call to :func:`train` did (record it in the run's metrics/env)."""

    steps: int                   # optimizer steps completed in total (including before a resume)
    examples_seen: int           # examples consumed in total (epochs x n, give or take a step)
    final_loss: float | None     # mean loss of the last optimizer step
    losses: list[float]          # mean loss of every optimizer step, first to last
    resumed_from: int | None     # the step a checkpoint was loaded at, or None for a fresh run
    elapsed_s: float             # wall time of this call
    world_size: int              # processes that trained
    global_batch: int            # examples per optimizer step (= config.batch_size)
    micro_batch_size: int = 0    # examples per forward pass per process
    grad_accum: int = 1          # micro-batches per optimizer step per process

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# learning-rate schedule


def lr_lambda(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based) of ``total``.

    - warm-up: steps ``0 .. warmup-1`` ramp linearly, ``(step + 1) / warmup``, so the first
      step already moves and the last warm-up step uses the full lr;
    - then, with ``progress = (step - warmup) / (total - warmup)`` going from 0 towards 1:
      ``cosine``: ``0.5 * (1 + cos(pi * progress))``; ``linear``: ``1 - progress``;
      ``constant``: 1. Both decays would reach 0 at ``step == total``, one step after the last.
    """
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {kind!r}; expected one of {list(SCHEDULERS)}")


# --------------------------------------------------------------------------------------------
# accelerate


def _has_accelerator_device() -> bool:
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()  # pragma: no cover - torch < 2.6


def make_accelerator(config: TrainConfig | None = None, logging_dir: str | Path | None = None):
    """An :class:`accelerate.Accelerator` for ``config`` that also works on CPU-only machines.

    ``Accelerator()`` on a machine without a GPU ignores a ``torchrun`` launch (every process
    trains alone as rank 0 of 1); passing ``cpu=True`` there makes it join the gloo process
    group. One process holds one accelerate state, so every stage of a run must use the same
    ``mixed_precision``.
    """
    from accelerate import Accelerator

    config = config or TrainConfig()
    kwargs: dict[str, Any] = {"cpu": not _has_accelerator_device(),
                              "mixed_precision": config.mixed_precision}
    if config.report_to != "none":
        _check_tracker(config.report_to)
        kwargs["log_with"] = config.report_to
        kwargs["project_dir"] = str(Path(logging_dir or ".") / "trackers")
    try:
        accelerator = Accelerator(**kwargs)
    except ValueError as e:  # e.g. fp16 without a GPU, or a second precision in one process
        raise W2SError(f"cannot set up accelerate with mixed_precision="
                       f"{config.mixed_precision!r}: {e}") from None
    if kwargs["cpu"] and accelerator.num_processes > 1:
        if _env_flag("ACCELERATE_USE_FSDP"):
            _shard_on_cpu(accelerator, "FSDP")
        elif _env_flag("ACCELERATE_USE_DEEPSPEED"):
            _shard_on_cpu(accelerator, "DEEPSPEED")
    if _launch_kind(accelerator) == "DEEPSPEED":
        _whole_models_for_transformers()
        accelerator.gradient_accumulation_steps = 1  # the loop accumulates (see train())
    if accelerator.num_processes > 1:
        atexit.unregister(_leave_process_group)  # registered once, however many accelerators
        atexit.register(_leave_process_group)
    return accelerator


def _leave_process_group() -> None:
    """Tear the process group down before the interpreter does (at exit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_launch(code: int = 0) -> None:
    """End this process of a multi-process launch with ``code``, skipping interpreter shutdown.

    After a sharded run over gloo (FSDP2 on CPU), interpreter shutdown sometimes aborts in a
    C++ destructor (SIGABRT, "terminate called without an active exception"), about one launch
    in 25 here, after every result was written: a finished run would report failure. So a
    process of a launch tears its process group down, flushes its output and exits at once.
    ``python -m w2s`` does this; a script that trains under torchrun should end with it. Without
    a launch (no process group) it is ``sys.exit(code)``.
    """
    import sys

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        sys.exit(code)
    if code == 0:  # no rank tears down while another is still in a collective
        dist.barrier()
    _leave_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}


def _shard_on_cpu(accelerator, kind: str) -> None:
    """FSDP2 or DeepSpeed over gloo on a CPU-only launch, as the launch asks (``kind``).

    accelerate wires both for GPU launches only: on CPU it runs plain data parallelism instead
    (under DeepSpeed its ranks do not even join). torch's FSDP2 (``fully_shard``) and DeepSpeed's
    CPU accelerator run on CPU too, so w2s joins the ranks as a plain CPU launch and switches the
    shared accelerate state to the plugin the launch's ``FSDP_*`` / ``ACCELERATE_DEEPSPEED_*``
    variables describe. This is how the test suite runs the sharded paths (``torchrun
    --nproc_per_node 2`` on CPU)."""
    if kind == "DEEPSPEED":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed picks one
    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

    state, target = accelerator.state, DistributedType[kind]
    if state.distributed_type == target:
        return
    plugin = DeepSpeedPlugin() if kind == "DEEPSPEED" else FullyShardedDataParallelPlugin()
    if str(state.mixed_precision) != "no":
        plugin.set_mixed_precision(str(state.mixed_precision))
    if kind == "DEEPSPEED":
        state.deepspeed_plugins = {"default": plugin}
        plugin.select(_from_accelerator_state=True)
        accelerator.deepspeed_engine_wrapped = None  # what Accelerator() sets up for DeepSpeed
    else:
        state.fsdp_plugin = plugin
    # both shared states: a later AcceleratorState() copies the process state over its own
    PartialState._shared_state["distributed_type"] = target
    state.distributed_type = target


def _whole_models_for_transformers() -> None:
    """accelerate tells transformers that ZeRO-3 is on (a global weak reference). transformers
    then loads every model partitioned and generates in lock-step across ranks (a rank that
    generates alone would wait forever). w2s loads models whole and gives the engine a copy of
    the one it trains, so it withdraws that reference."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def process_precision(default: str = "no") -> str:
    """The mixed precision this process already trains in (one accelerate state per process,
    set by its first :func:`make_accelerator`), or ``default`` when none is set up yet.

    For trainings a method starts on the side, e.g. pretraining a tiny model the first time it is
    loaded: their config must use this precision, and their cache key should record it."""
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state:  # nothing set up: do not set anything up here
        return default
    return str(AcceleratorState().mixed_precision)


def _check_tracker(name: str) -> None:
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[name]()
    if not available:
        raise W2SError(f"report_to={name} needs the {name} package: pip install {name} "
                       "(or use report_to=none)")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DDP wrapper: for attributes (``.config``, ``.disable_adapter()``) in a
    ``loss_fn``. Forward passes should go through the wrapper, ``model(...)``, so DDP syncs."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _unsupported_launch() -> str | None:
    """Why this process's accelerate launch cannot run the w2s loop (None when it can).

    - DeepSpeed with ``zero3_init_flag``: transformers then loads every model partitioned,
      but w2s loads every model whole on every rank and lets the loop partition a copy.
    - FSDP version 1: w2s shards with FSDP2 (``fully_shard``), accelerate's recommended one.
    - ``fsdp_cpu_ram_efficient_loading``: transformers then loads real weights on rank 0 only,
      but w2s loads every model on every rank (the frozen ones are not sharded).
    """
    if _env_flag("ACCELERATE_USE_DEEPSPEED") and _env_flag("ACCELERATE_DEEPSPEED_ZERO3_INIT"):
        return ("zero3_init_flag makes transformers load every model partitioned, but w2s loads "
                "every model whole on every rank; set zero3_init_flag: false (see "
                "recipes/accelerate/deepspeed-zero3.yaml)")
    if _env_flag("ACCELERATE_USE_FSDP"):
        version = os.environ.get("FSDP_VERSION", "1").strip()
        if version != "2":
            return (f"w2s shards with FSDP2 but this launch asks for fsdp_version {version}; set "
                    "fsdp_version: 2 in the accelerate config (see recipes/accelerate/fsdp.yaml)")
        if _env_flag("FSDP_CPU_RAM_EFFICIENT_LOADING"):
            return ("fsdp_cpu_ram_efficient_loading makes transformers load real weights on rank "
                    "0 only, but w2s loads every model on every rank; set "
                    "fsdp_cpu_ram_efficient_loading: false (see recipes/accelerate/fsdp.yaml)")
    return None


def refuse_unsupported_launch() -> None:
    """At start-up, before any data or model is touched: a one-line error when ``accelerate
    launch`` was given a config the loop cannot run (it says so in the environment)."""
    reason = _unsupported_launch()
    if reason:
        raise W2SError(reason)


def _launch_kind(accelerator) -> str:
    """``FSDP``, ``DEEPSPEED``, or another accelerate distributed type (``NO``, ``MULTI_GPU``...)."""
    return str(getattr(accelerator, "distributed_type", "")).rsplit(".", 1)[-1]


def _configure_deepspeed(accelerator, plan: _Plan, config: TrainConfig) -> None:
    """The engine's batch arithmetic and clipping come from the TrainConfig, not from the
    accelerate config file: one micro-batch per backward, ``plan.accum`` backwards per step."""
    clip = config.max_grad_norm
    accelerator.state.deepspeed_plugin.deepspeed_config.update(
        train_micro_batch_size_per_gpu=plan.micro, gradient_accumulation_steps=plan.accum,
        train_batch_size=plan.micro * plan.accum * plan.world,
        gradient_clipping=0.0 if clip is None or math.isinf(clip) else clip)


def _reset_wrap_policy(accelerator) -> None:
    """accelerate's FSDP plugin keeps the block classes of the first model it wrapped, and
    refuses a second model without them (a reward head after a language model); w2s trains
    several models in one process, so each starts from the launch's own settings."""
    plugin = accelerator.state.fsdp_plugin
    if isinstance(plugin.auto_wrap_policy, functools.partial):
        plugin.auto_wrap_policy = plugin.auto_wrap_policy.func
    names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").strip()
    plugin.transformer_cls_names_to_wrap = names.split(",") if names else None


def _check_accelerator(accelerator, config: TrainConfig) -> None:
    """Refuse setups that would silently train differently from what the config says."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise W2SError(f"launched as {launched} processes but accelerate sees "
                       f"{accelerator.num_processes}: each process would train alone. Create the "
                       "accelerator with w2s.train.make_accelerator() (it passes cpu=True on "
                       "machines without a GPU)")
    kind = _launch_kind(accelerator)
    reason = _unsupported_launch()
    if reason:
        raise W2SError(reason)
    if kind == "FSDP" and not getattr(accelerator, "is_fsdp2", False):
        raise W2SError("w2s shards with FSDP2: set fsdp_version: 2 in the accelerate config "
                       "(see recipes/accelerate/fsdp.yaml)")
    if accelerator.gradient_accumulation_steps != 1:
        raise ValueError("pass an Accelerator without gradient_accumulation_steps: train() "
                         "accumulates itself (set TrainConfig.micro_batch_size)")
    if str(accelerator.mixed_precision) != config.mixed_precision:
        raise W2SError(f"the accelerator runs mixed_precision={accelerator.mixed_precision!s} but "
                       f"the config says {config.mixed_precision}; one process has one precision, "
                       "so use the same mixed_precision for every stage")


# --------------------------------------------------------------------------------------------
# planning: which examples each step, each process and each micro-batch sees


@dataclass
class _Plan:
    n: int                # examples
    batch: int            # global batch
    micro: int            # per-process micro-batch
    world: int            # processes
    accum: int            # micro-batches per full step per process
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def _plan(config: TrainConfig, n: int, world: int) -> _Plan:
    if n == 0:
        raise W2SError("no training examples; check the data split")
    micro = config.micro_batch_size
    if micro is None:  # the global batch split over the processes, no accumulation
        if config.batch_size % world:
            raise W2SError(f"batch_size {config.batch_size} cannot be split evenly over {world} "
                           f"processes; choose a multiple of {world} or set micro_batch_size")
        micro = config.batch_size // world
    per_step = micro * world
    if config.batch_size % per_step:
        options = [d for d in range(1, config.batch_size + 1)
                   if config.batch_size % (d * world) == 0]
        hint = (f"choose micro_batch_size in {options}" if options else
                f"choose a batch_size that is a multiple of {world}")
        raise W2SError(f"batch_size {config.batch_size} is not a multiple of micro_batch_size "
                       f"{micro} x {world} process(es) = {per_step}; {hint}")
    steps_per_epoch = math.ceil(n / config.batch_size)
    if config.max_steps is not None:
        total = config.max_steps
    else:  # round() first so that 0.3 * 10 = 3.0000000000000004 is 3 steps, not 4
        total = max(1, math.ceil(round(config.epochs * steps_per_epoch, 6)))
    warmup = math.ceil(config.warmup_ratio * total)
    return _Plan(n, config.batch_size, micro, world,
                 config.batch_size // per_step, steps_per_epoch, total, warmup)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The permutation of epoch ``epoch``: depends on (n, seed, epoch) only."""
    g = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).tolist()


def _step_examples(plan: _Plan, step: int, seed: int, orders: dict[int, list[int]]) -> list[int]:
    """Indices of the examples of optimizer step ``step`` (0-based): a pure function of it."""
    epoch, within = divmod(step, plan.steps_per_epoch)
    if epoch not in orders:
        orders.clear()
        orders[epoch] = _epoch_order(plan.n, seed, epoch)
    return orders[epoch][within * plan.batch:(within + 1) * plan.batch]


def _micro_batches(indices: list[int], rank: int, world: int, micro: int) -> list[list[int]]:
    """This process's micro-batches of one step: every ``world``-th example from ``rank``.

    Every process gets the same number of micro-batches (that of rank 0, which has the most), so
    all of them join the gradient all-reduce of the last one; an empty one is run as a
    zero-weight dummy.
    """
    share = indices[rank::world]
    n_micro = math.ceil(math.ceil(len(indices) / world) / micro)
    return [share[k * micro:(k + 1) * micro] for k in range(n_micro)]


# --------------------------------------------------------------------------------------------
# checkpoints


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _fingerprint(config: TrainConfig, n: int, model: torch.nn.Module) -> dict:
    """What must match for a checkpoint to be resumed: data size, config, trainable tensors."""
    cfg = {k: v for k, v in dataclasses.asdict(config).items() if k not in RESUME_FREE}
    shapes = {name: list(p.shape) for name, p in _trainable(model).items()}
    return {"n_examples": n, "config": cfg, "trainable": content_hash(shapes)}


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
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


def _full(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a parameter: an FSDP2 shard (a DTensor) is gathered from every rank,
    so under FSDP every rank must call this, in the same order."""
    from torch.distributed.tensor import DTensor

    return p.full_tensor() if isinstance(p, DTensor) else p


def _full_trainable(model: torch.nn.Module, kind: str):
    """``(name, whole tensor)`` of each trainable parameter, gathered one at a time from its
    shards (FSDP2 DTensors, DeepSpeed ZeRO-3 partitions). A collective when sharded: every rank
    iterates, in the same order."""
    for name, p in _trainable(model).items():
        if kind == "DEEPSPEED":
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                yield name, p.data.detach().clone()
        else:
            yield name, _full(p)


def _gather_state(model: torch.nn.Module, optimizer, kind: str,
                  main: bool) -> tuple[dict, dict]:
    """``(trainable weights, optimizer state)`` on CPU, both keyed by parameter name: the one
    checkpoint format of DDP and FSDP launches, so a run resumes under either (DeepSpeed's
    engine writes its optimizer state itself: an empty dict here). Every rank calls this (the
    sharded launches gather); only the main process gets them (the others get empty dicts)."""
    weights = {}
    for name, full in _full_trainable(model, kind):
        if main:
            weights[name] = full.detach().cpu().contiguous().clone()
    if kind == "DEEPSPEED" or not (kind == "FSDP" or main):
        return weights, {}
    if kind == "FSDP":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return weights, get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names = list(_trainable(model))  # the optimizer's parameters, in this order
    state = optimizer.state_dict()
    return weights, {"state": {names[i]: v for i, v in state["state"].items()},
                     "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                                      for g in state["param_groups"]]}


def _load_optimizer(model: torch.nn.Module, optimizer, saved: dict, kind: str) -> None:
    if kind == "FSDP":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(model, optimizer, optim_state_dict=saved,
                                 options=StateDictOptions(full_state_dict=True))
        return
    groups = saved["param_groups"]
    if groups and groups[0]["params"] and isinstance(groups[0]["params"][0], int):
        optimizer.load_state_dict(saved)  # keyed by position: an older w2s checkpoint
        return
    index = {name: i for i, name in enumerate(_trainable(model))}
    optimizer.load_state_dict({
        "state": {index[n]: v for n, v in saved["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                         for g in saved["param_groups"]]})


def _engine_staging(checkpoint_dir: Path, step: int) -> Path:
    """Where every rank writes its part of DeepSpeed's engine state before the checkpoint."""
    return checkpoint_dir / f".engine-step-{step:08d}"


def _save_checkpoint(checkpoint_dir: Path, weights: dict, optimizer_state: dict, scheduler,
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
        torch.save({"scheduler": scheduler.state_dict(), "rng": _rng_state()}, tmp / "state.pt")
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


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(path / "trainable.safetensors"))
    params = _trainable(model)
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
    _load_weights(model, found[0])
    return found[1]


def _check_fingerprint(path: Path, saved: dict, now: dict) -> None:
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


def _make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)


def _checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Turn transformers' activation (gradient) checkpointing on or off, non-reentrant."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif hasattr(model, "gradient_checkpointing_enable"):
        if on:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_disable()
    else:
        raise W2SError(f"{type(model).__name__} does not support gradient checkpointing; "
                       "turn gradient_checkpointing off")


def _split_output(out: Any, b: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``loss_fn`` output -> (per-example losses ``[b]``, extra metrics summed over examples)."""
    extras: dict[str, torch.Tensor] = {}
    if isinstance(out, dict):
        if "loss" not in out:
            raise ValueError("a loss_fn that returns a dict must put the per-example losses "
                             "under 'loss'")
        for key, value in out.items():
            if key == "loss":
                continue
            value = torch.as_tensor(value).detach().float()
            # a scalar is a mean over the micro-batch; a [b] tensor is per example
            extras[key] = value.sum() if value.dim() == 1 and len(value) == b else value * b
        out = out["loss"]
    if not isinstance(out, torch.Tensor) or out.dim() != 1 or out.shape[0] != b:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"loss_fn must return one loss per example (shape [{b}]), got {shape}; "
                         "return the unreduced losses and let train() average them")
    return out, extras


def train(model: torch.nn.Module, examples: Sequence, *, loss_fn: Callable, collate: Callable,
          config: TrainConfig, checkpoint_dir: str | Path | None = None,
          log: Callable[[dict], None] | None = None, progress: bool | None = None,
          description: str = "train", accelerator=None) -> TrainResult:
    """Train the parameters of ``model`` that require grad, in place; see the module docstring.

    - ``loss_fn(model, batch)`` gets the prepared model (a DDP wrapper when several processes:
      call ``model(...)`` for forward passes, :func:`unwrap` for attributes) and the collated
      batch on the model's device, and returns per-example losses ``[b]`` or
      ``{"loss": [b], **metrics}`` (metrics: scalars for the micro-batch or ``[b]`` tensors;
      logged as their mean over the examples of the step).
    - ``log(record)`` is called on the main process every ``log_every`` steps (and at the last)
      with ``step`` (optimizer steps done), ``epoch`` (examples seen / n), ``loss`` (mean over
      the step's examples), ``lr`` (used for that step), ``grad_norm`` (before clipping),
      ``examples_seen`` and the metrics.
    - ``checkpoint_dir``: where resumable checkpoints go (only the main process writes).
    - ``accelerator``: reuse one across stages; by default :func:`make_accelerator` (config).

    Returns a :class:`TrainResult`; ``model`` itself ends trained, unwrapped, on the device, in
    the train/eval mode it came in.
    """
    started = time.perf_counter()
    config.validate()
    accelerator = accelerator or make_accelerator(config, logging_dir=checkpoint_dir)
    _check_accelerator(accelerator, config)
    world, rank = accelerator.num_processes, accelerator.process_index
    main, device = accelerator.is_main_process, accelerator.device
    plan = _plan(config, len(examples), world)

    if not _trainable(model):
        raise ValueError("model has no parameters with requires_grad=True: nothing to train")
    fingerprint = _fingerprint(config, plan.n, model)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    found = read_checkpoint(ckdir) if ckdir is not None else None
    if found is not None:
        _check_fingerprint(found[0], found[1]["fingerprint"], fingerprint)

    def result(state: dict, resumed_from: int | None) -> TrainResult:
        losses = state["losses"]
        return TrainResult(steps=state["step"], examples_seen=state["examples_seen"],
                           final_loss=losses[-1] if losses else None, losses=list(losses),
                           resumed_from=resumed_from, elapsed_s=time.perf_counter() - started,
                           world_size=world, global_batch=plan.batch,
                           micro_batch_size=plan.micro, grad_accum=plan.accum)

    if found is not None and found[1]["done"]:  # finished earlier: just the final weights
        _load_weights(model, found[0])
        model.to(device)
        return result(found[1], resumed_from=found[1]["step"])

    # ---- set up: seeds, optimizer, schedule, accelerate ------------------------------------
    from w2s.seeding import seed_everything

    seed_everything(config.seed)
    kind = _launch_kind(accelerator)
    sharded, deepspeed = kind in ("FSDP", "DEEPSPEED"), kind == "DEEPSPEED"
    if sharded and any(type(p).__name__ in ("Params4bit", "Int8Params")
                       for p in model.parameters()):
        raise W2SError(f"w2s does not train a bitsandbytes-quantized model under {kind}; "
                       "launch with recipes/accelerate/ddp.yaml (LoRA on a 4-bit model fits "
                       "one GPU per process)")
    if found is not None and (found[0] / "deepspeed").is_dir() != deepspeed:
        raise W2SError(f"checkpoint {found[0]} was written by a "
                       f"{'DeepSpeed' if not deepspeed else 'non-DeepSpeed'} launch; resume it "
                       f"with that kind of launch, or delete {ckdir} to start over")
    if found is not None:  # every rank loads the same weights before DDP, FSDP or DeepSpeed
        _load_weights(model, found[0])
    # FSDP shards a copy: the caller's model stays a plain module, so what follows training
    # (scoring, generation, often on one rank) needs no collectives; it gets the trained weights
    # at the end. The copy is whole only until accelerate shards it (a second model's memory
    # for a moment); then each rank keeps a 1/world_size share of it, its gradients and the
    # optimizer state, next to the whole model it loaded (see recipes/accelerate/fsdp.yaml).
    # DeepSpeed does the same with its engine (ZeRO-3 partitions the copy).
    target, model = model, (copy.deepcopy(model) if sharded else model)
    if kind == "FSDP":
        _reset_wrap_policy(accelerator)
    if deepspeed:
        _configure_deepspeed(accelerator, plan, config)
    if config.gradient_checkpointing:
        _checkpointing(model, on=True)
    optimizer = _make_optimizer(list(_trainable(model).values()), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, plan.total_steps, plan.warmup_steps, config.scheduler))
    # the scheduler is stepped by hand, once per optimizer step: accelerate's scheduler wrapper
    # would step it once per process
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    model = accelerator.unwrap_model(wrapped)
    params = list(_trainable(model).values())  # FSDP's sharded ones, under FSDP
    if deepspeed:  # accelerate copies the engine's accumulation here; the loop accumulates
        accelerator.gradient_accumulation_steps = 1

    state: dict[str, Any] = {"step": 0, "examples_seen": 0, "losses": [], "elapsed_s": 0.0}
    resumed_from = None
    if found is not None:
        path, saved = found
        if deepspeed:  # the engine's own state: optimizer partitions and fp32 weights
            wrapped.load_checkpoint(str(path / "deepspeed"), tag="state",
                                    load_module_strict=False, load_lr_scheduler_states=False)
        else:
            _load_optimizer(model, optimizer, torch.load(
                path / "optimizer.pt", map_location="cpu", weights_only=True), kind)
        extra = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        scheduler.load_state_dict(extra["scheduler"])
        _set_rng_state(extra["rng"])
        state.update({k: saved[k] for k in ("step", "examples_seen", "losses", "elapsed_s")})
        resumed_from = saved["step"]

    if config.report_to != "none":
        hparams = {k: "none" if v is None else v for k, v in dataclasses.asdict(config).items()}
        accelerator.init_trackers(description.replace(" ", "-"), config=hparams)

    bar = Bar(description, plan.total_steps, state["step"], on=main and progress_enabled(progress),
              fields=("loss", "lr"))
    was_training = model.training
    model.train()
    orders: dict[int, list[int]] = {}
    call_start = time.perf_counter()
    prior_elapsed = state["elapsed_s"]
    try:
        for step in range(state["step"], plan.total_steps):
            indices = _step_examples(plan, step, config.seed, orders)
            m = len(indices)
            parts = _micro_batches(indices, rank, world, plan.micro)
            loss_sum = torch.zeros((), device=device)
            extra_sums: dict[str, torch.Tensor] = {}
            for k, part in enumerate(parts):
                # an empty share (partial last batch, several processes) still joins the
                # all-reduce: run one example with weight 0
                items = [examples[i] for i in (part or indices[:1])]
                weight = world / m if part else 0.0
                batch = _to_device(collate(items), device)
                last = k == len(parts) - 1
                if deepspeed:  # the engine: told where the step ends, not to rescale the loss
                    wrapped.set_gradient_accumulation_boundary(last)
                    losses, extras = _split_output(loss_fn(wrapped, batch), len(items))
                    wrapped.backward(losses.sum() * weight, scale_wrt_gas=False)
                    if last:
                        wrapped.step()  # clips to max_grad_norm and steps the optimizer
                else:
                    with nullcontext() if last else accelerator.no_sync(wrapped):
                        losses, extras = _split_output(loss_fn(wrapped, batch), len(items))
                        accelerator.backward(losses.sum() * weight)
                # a dummy adds 0, but still adds its keys: every process reduces the same list
                counted = 1.0 if part else 0.0
                loss_sum += losses.detach().float().sum() * counted
                for key, value in extras.items():
                    extra_sums[key] = extra_sums.get(key, 0.0) + value.to(device) * counted

            max_norm = config.max_grad_norm if config.max_grad_norm is not None else math.inf
            if deepspeed:  # clipped in the engine's step
                grad_norm = wrapped.get_global_grad_norm()
            elif sharded:  # accelerate clips under FSDP only when every parameter trains
                accelerator.unscale_gradients()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            else:
                grad_norm = accelerator.clip_grad_norm_(params, max_norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            keys = sorted(extra_sums)
            totals = torch.stack([loss_sum, *(extra_sums[k] for k in keys)]).reshape(-1)
            totals = accelerator.reduce(totals, reduction="sum") / m
            step_loss = float(totals[0])
            state["step"] = step + 1
            state["examples_seen"] += m
            state["losses"].append(step_loss)
            state["elapsed_s"] = prior_elapsed + time.perf_counter() - call_start

            done = state["step"] == plan.total_steps
            every = config.checkpoint_every or plan.steps_per_epoch
            if ckdir is not None and (done or state["step"] % every == 0):
                weights, optimizer_state = _gather_state(model, optimizer, kind, main)
                engine_dir = None
                if deepspeed:  # every rank writes its partitions
                    engine_dir = _engine_staging(ckdir, state["step"])
                    if main:
                        shutil.rmtree(engine_dir, ignore_errors=True)
                    accelerator.wait_for_everyone()
                    wrapped.save_checkpoint(str(engine_dir), tag="state", save_latest=False)
                    accelerator.wait_for_everyone()
                if main:
                    _save_checkpoint(ckdir, weights, optimizer_state, scheduler, {
                        **state, "done": done, "total_steps": plan.total_steps,
                        "fingerprint": fingerprint, "config": dataclasses.asdict(config),
                        "world_size": world, "global_batch": plan.batch,
                        "time": _dt.datetime.now().astimezone().isoformat(timespec="seconds")},
                        engine_dir=engine_dir)
                accelerator.wait_for_everyone()

            bar.update(state["step"], loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            if done or state["step"] % config.log_every == 0:
                record = {"step": state["step"], "epoch": state["examples_seen"] / plan.n,
                          "loss": step_loss, "lr": lr,
                          "grad_norm": math.nan if grad_norm is None else float(_full(grad_norm)),
                          "examples_seen": state["examples_seen"]}
                record.update({k: float(v) for k, v in zip(keys, totals[1:], strict=True)})
                if config.report_to != "none":
                    accelerator.log({k: v for k, v in record.items() if k != "step"},
                                    step=state["step"])
                if main and log is not None:
                    log(record)
    finally:
        bar.stop()
        model.train(was_training)
        if config.gradient_checkpointing:
            _checkpointing(model, on=False)
        accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False)  # undo autocast patching
        # release accelerate's references to this model and optimizer (and their memory), as
        # accelerate asks between two trainings; the caller's model object is the trained one
        accelerator.free_memory()
    if sharded:  # every rank gathers each trained tensor into the caller's model
        into = _trainable(target)
        with torch.no_grad():
            for name, full in _full_trainable(model, kind):
                into[name].copy_(full)
        del model, wrapped, optimizer
        if any(p.device != device for p in target.parameters()):
            target.to(device)
    if config.report_to != "none":
        accelerator.end_training()
    return result(state, resumed_from)


def _to_device(batch: Any, device: torch.device) -> Any:
    from accelerate.utils import send_to_device

    return send_to_device(batch, device)
