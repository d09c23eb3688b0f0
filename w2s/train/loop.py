"""The one training loop every w2s method trains through.

A method brings three things: a list of ``examples`` (anything), a ``collate`` that turns a list
of them into a batch (a dict of tensors), and a ``loss_fn(model, batch)`` that returns ONE LOSS
PER EXAMPLE (a ``[b]`` tensor, or ``{"loss": [b] tensor, **scalar_metrics}``); a loss that
depends on training progress (logconf's warm-up) takes a third argument, the :class:`Step`.
The loop does the rest, the same way for classifiers, SFT, DPO, reward models and the rest::

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
``deepspeed-zero3.yaml``) the same holds: the loop is the same, and what differs (preparing the
model, backpropagating, clipping and stepping, gathering and saving the state) is the launch's
backend, :mod:`w2s.train.backends`. Setting up the launch is :mod:`w2s.train.launch`; the
checkpoint files are :mod:`w2s.train.checkpoint`.

Compute
-------
Every micro-batch's real tokens (the ``attention_mask``'s ones, else the ``input_ids``) count
as forward and backward tokens of the current :mod:`w2s.compute` stage.

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

import dataclasses
import datetime as _dt
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from w2s import compute
from w2s.errors import W2SError
from w2s.progress import Bar, progress_enabled
from w2s.train import checkpoint as ckpt
from w2s.train.backends import backend_for, full_tensor
from w2s.train.config import TrainConfig, TrainResult, lr_lambda
from w2s.train.launch import check_accelerator, make_accelerator

__all__ = ["Step", "train", "unwrap"]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DDP wrapper: for attributes (``.config``, ``.disable_adapter()``) in a
    ``loss_fn``. Forward passes should go through the wrapper, ``model(...)``, so DDP syncs."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@dataclass(frozen=True)
class Step:
    """Where the training is when the loop calls ``loss_fn(model, batch, step)``."""

    index: int          # the optimizer step, 0-based (a resumed training goes on counting)
    total: int          # optimizer steps of the whole training
    micro: int          # this micro-batch of the step, on this process, 0-based
    micro_batches: int  # micro-batches of the step on this process


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


def _dropout_off(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, float]]:
    """Set every dropout probability of ``model`` to 0: the ``p`` of its dropout modules and the
    float ``attention_dropout`` / ``dropout`` rates attention layers apply functionally. Returns
    ``(module, attribute, old value)`` to restore them."""
    changed = []
    for module in model.modules():
        names = ["p"] if isinstance(module, torch.nn.modules.dropout._DropoutNd) else []
        names += [n for n in ("attention_dropout", "dropout")
                  if isinstance(getattr(module, n, None), float)]
        for name in names:
            old = getattr(module, name)
            if old:
                changed.append((module, name, old))
                setattr(module, name, 0.0)
    return changed


def _takes_step(loss_fn: Callable) -> bool:
    """Whether ``loss_fn`` has a third positional parameter (for the :class:`Step`)."""
    try:
        params = inspect.signature(loss_fn).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 3


def _batch_tokens(batch: Any) -> int:
    """The real tokens of a collated batch: its attention mask's ones, else its token ids."""
    if isinstance(batch, dict):
        if isinstance(batch.get("attention_mask"), torch.Tensor):
            return int(batch["attention_mask"].sum())
        if isinstance(batch.get("input_ids"), torch.Tensor):
            return batch["input_ids"].numel()
    return 0


def train(model: torch.nn.Module, examples: Sequence, *, loss_fn: Callable, collate: Callable,
          config: TrainConfig, checkpoint_dir: str | Path | None = None,
          log: Callable[[dict], None] | None = None, progress: bool | None = None,
          description: str = "train", accelerator=None) -> TrainResult:
    """Train the parameters of ``model`` that require grad, in place; see the module docstring.

    - ``loss_fn(model, batch)`` or ``loss_fn(model, batch, step)`` gets the prepared model (a
      DDP wrapper when several processes: call ``model(...)`` for forward passes, :func:`unwrap`
      for attributes), the collated batch on the model's device and, when it takes a third
      argument, the :class:`Step`; it returns per-example losses ``[b]`` or
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
    check_accelerator(accelerator, config)
    world, rank = accelerator.num_processes, accelerator.process_index
    main, device = accelerator.is_main_process, accelerator.device
    plan = _plan(config, len(examples), world)

    if not ckpt.trainable(model):
        raise ValueError("model has no parameters with requires_grad=True: nothing to train")
    fingerprint = ckpt.fingerprint(config, plan.n, model)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    found = ckpt.read_checkpoint(ckdir) if ckdir is not None else None
    if found is not None:
        ckpt.check_fingerprint(found[0], found[1]["fingerprint"], fingerprint)

    def result(state: dict, resumed_from: int | None) -> TrainResult:
        losses = state["losses"]
        return TrainResult(steps=state["step"], examples_seen=state["examples_seen"],
                           final_loss=losses[-1] if losses else None, losses=list(losses),
                           resumed_from=resumed_from, elapsed_s=time.perf_counter() - started,
                           world_size=world, global_batch=plan.batch,
                           micro_batch_size=plan.micro, grad_accum=plan.accum)

    if found is not None and found[1]["done"]:  # finished earlier: just the final weights
        ckpt.load_weights(model, found[0])
        model.to(device)
        return result(found[1], resumed_from=found[1]["step"])

    # ---- set up: seeds, the backend, optimizer, schedule -----------------------------------
    from w2s.seeding import seed_everything

    seed_everything(config.seed)
    backend = backend_for(accelerator)
    backend.check(model, found[0] if found is not None else None)
    if found is not None:  # every rank loads the same weights before DDP, FSDP or DeepSpeed
        ckpt.load_weights(model, found[0])
    # a sharding backend trains a copy: the caller's model stays a plain module, so what follows
    # training (scoring, generation, often on one rank) needs no collectives; it gets the
    # trained weights at the end (backend.finish)
    target, model = model, backend.copy_for_training(model)
    dropout = _dropout_off(model) if config.disable_dropout else []
    backend.configure(plan, config)
    if config.gradient_checkpointing:
        _checkpointing(model, on=True)
    optimizer = _make_optimizer(list(ckpt.trainable(model).values()), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, plan.total_steps, plan.warmup_steps, config.scheduler))
    # the scheduler is stepped by hand, once per optimizer step: accelerate's scheduler wrapper
    # would step it once per process
    optimizer = backend.prepare(model, optimizer)
    model = backend.model

    state: dict[str, Any] = {"step": 0, "examples_seen": 0, "losses": [], "elapsed_s": 0.0}
    resumed_from = None
    if found is not None:
        path, saved = found
        backend.load_state(path, optimizer)
        extra = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        scheduler.load_state_dict(extra["scheduler"])
        ckpt.set_rng_state(extra["rng"])
        state.update({k: saved[k] for k in ("step", "examples_seen", "losses", "elapsed_s")})
        resumed_from = saved["step"]

    if config.report_to != "none":
        hparams = {k: "none" if v is None else v for k, v in dataclasses.asdict(config).items()}
        accelerator.init_trackers(description.replace(" ", "-"), config=hparams)

    bar = Bar(description, plan.total_steps, state["step"], on=main and progress_enabled(progress),
              fields=("loss", "lr"))
    with_step = _takes_step(loss_fn)
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
                batch = collate(items)
                if part:
                    tokens = _batch_tokens(batch)
                    compute.count(forward=tokens, backward=tokens)
                batch = _to_device(batch, device)
                where = Step(step, plan.total_steps, k, len(parts))

                def loss_of(wrapped, batch=batch, where=where, b=len(items)):
                    out = loss_fn(wrapped, batch, where) if with_step else loss_fn(wrapped, batch)
                    return _split_output(out, b)

                losses, extras = backend.backward(loss_of, weight, last=k == len(parts) - 1)
                # a dummy adds 0, but still adds its keys: every process reduces the same list
                counted = 1.0 if part else 0.0
                loss_sum += losses.detach().float().sum() * counted
                for key, value in extras.items():
                    extra_sums[key] = extra_sums.get(key, 0.0) + value.to(device) * counted

            grad_norm = backend.clip(config.max_grad_norm if config.max_grad_norm is not None
                                     else math.inf)
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
                weights, optimizer_state = backend.gather(optimizer, main)
                engine_dir = backend.save_engine(ckdir, state["step"])
                if main:
                    ckpt.save_checkpoint(ckdir, weights, optimizer_state, scheduler, {
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
                          "grad_norm": math.nan if grad_norm is None else
                          float(full_tensor(grad_norm)),
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
        for module, name, p in dropout:  # the model's own dropout again, for whoever trains next
            setattr(module, name, p)
        if config.gradient_checkpointing:
            _checkpointing(model, on=False)
        accelerator.unwrap_model(backend.wrapped, keep_fp32_wrapper=False)  # undo autocast
        # release accelerate's references to this model and optimizer (and their memory), as
        # accelerate asks between two trainings; the caller's model object is the trained one
        accelerator.free_memory()
    del model, optimizer
    backend.finish(target, device)  # a sharding backend gathers the weights into the caller's
    if config.report_to != "none":
        accelerator.end_training()
    return result(state, resumed_from)


def _to_device(batch: Any, device: torch.device) -> Any:
    from accelerate.utils import send_to_device

    return send_to_device(batch, device)
