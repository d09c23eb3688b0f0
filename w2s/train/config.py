"""The training loop's settings and its result: :class:`TrainConfig` (the ``train:`` section of
every recipe), :class:`TrainResult`, and the learning-rate schedule :func:`lr_lambda`.

Torch-free: a config can be built, validated and hashed into a cache key without torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from w2s.errors import W2SError, did_you_mean

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
    disable_dropout: bool = field(default=True, metadata={
        "help": "train with every dropout probability set to 0, as the openai and deception "
                "authors, LLaMA-Factory and TRL's DPO do (a DPO loss then starts at log 2); "
                "false keeps the model's own dropout"})
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
