"""Config sections shared by the methods: how a model is trained (:class:`StageTrain`), the
runtime, sweeps, LoRA, judging and sampling.

Each is one dataclass with one help text and bounds per field; a method uses it as a section
(``section(StageTrain, ...)``), inline where its recipe keys sit at the top level
(``section(Runtime, ..., inline=True)``), and changes defaults with :func:`~w2s.config.derive`
(or :func:`stage_train`) instead of copying the fields. Torch-free: each section turns into the
lower layer's own type (:class:`w2s.train.TrainConfig`, :class:`w2s.models.generate.SamplingConfig`)
when a method asks, importing it then.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from w2s.config import derive, option

# --------------------------------------------------------------------------------------------
# training sections

OPTIMIZERS = ("adamw", "adam", "sgd")        # w2s.train.config's, copied: importing it loads torch (a test
SCHEDULERS = ("cosine", "linear", "constant")  # compares them)
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class StageTrain:
    """How one model of a method is trained: a recipe section (``weak_train:``, ``dpo:``, ...)
    holding the loop's settings, turned into a :class:`w2s.train.TrainConfig` by
    :meth:`train_config`.

    Each method derives its sections with :func:`stage_train` (same fields, its own defaults and
    help), so every method's training is configured the same way. ``lr`` / ``epochs`` none
    means "the method's default for this stage" (given to :meth:`train_config`).
    """

    lr: float | None = option(None, "peak learning rate; none = the method's default for this "
                              "stage", above=0)
    epochs: float | None = option(1.0, "passes over the training examples (fractions allowed)",
                                  above=0)
    max_steps: int | None = option(None, "optimizer steps; overrides epochs when set", min=1)
    batch_size: int = option(32, "global batch (examples per step)", min=1)
    micro_batch_size: int | None = option(
        8, "examples per forward pass per device (gradient accumulation makes up the rest); "
        "none = the batch split evenly over the processes", min=1)
    optimizer: str = option("adamw", "adamw, adam or sgd", choices=list(OPTIMIZERS))
    weight_decay: float = option(0.0, "weight decay", min=0)
    scheduler: str = option("cosine", "cosine, linear or constant", choices=list(SCHEDULERS))
    warmup_ratio: float = option(0.0, "lr warm-up fraction", min=0, below=1)
    max_grad_norm: float | None = option(1.0, "gradient clipping; none = off", above=0)
    mixed_precision: str = option("no", "no, bf16 or fp16", choices=list(PRECISIONS))
    checkpoint_every: int = option(0, "resumable checkpoint every N steps (0: every epoch)",
                                   min=0)
    gradient_checkpointing: bool = option(False, "recompute activations: less memory, slower")
    disable_dropout: bool = option(True, "train with dropout off (the authors' and TRL's DPO "
                                   "practice; DPO then starts at loss log 2); false keeps the "
                                   "model's own dropout")

    def train_config(self, *, seed: int, default_lr: float | None = None,
                     default_epochs: float | None = None, **changes: Any):
        """The validated :class:`w2s.train.TrainConfig` of this stage: ``lr``/``epochs`` from
        the section, else the defaults given here; ``seed``; then ``changes`` (e.g.
        ``max_steps=None``)."""
        from w2s.train import TrainConfig

        names = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in names}
        values["lr"] = self.lr if self.lr is not None else default_lr
        values["epochs"] = self.epochs if self.epochs is not None else default_epochs
        if values["lr"] is None or values["epochs"] is None:
            raise ValueError("a stage without lr or epochs needs default_lr / default_epochs")
        config = TrainConfig(**{**values, "seed": seed, **changes})
        config.validate()
        return config


def stage_train(name: str, doc: str, *, module: str, help: dict[str, str] | None = None,
                **defaults: Any) -> type:
    """A :class:`StageTrain` subclass with other ``defaults`` (and ``help`` texts): one line per
    method section instead of a copy of every field, e.g.
    ``WSPOTrain = stage_train("WSPOTrain", "...", module=__name__, lr=5e-6, epochs=3.0)``."""
    unknown = (set(defaults) | set(help or {})) - {f.name for f in dataclasses.fields(StageTrain)}
    if unknown:
        raise TypeError(f"{name}: StageTrain has no field(s) {sorted(unknown)}")
    return derive(StageTrain, name, doc, module=module, help=help, **defaults)


# --------------------------------------------------------------------------------------------
# shared sections: declared once here, used inline by the methods (flags and recipe keys at the
# top level); a method changes a default with derive(), and leaves out what it lacks with drop=


@dataclass
class Runtime:
    """Where a run executes and where it writes: device, weights' dtype, seed, run directory."""

    device: str = option("auto", "auto, cpu, cuda or mps")
    dtype: str = option("auto", "auto (bf16 on CUDA, fp32 elsewhere), bf16, fp16 or fp32")
    seed: int = option(0, "seed of everything the run draws at random (data samples and splits, "
                       "initialisation, training, sampling)", min=0)
    run_dir: str | None = option(None, "run directory (default runs/<method>/<time>-<hash>); an "
                                 "unfinished one is reopened")


LAUNCHERS = ("none", "local", "ray")  # w2s.launch's


@dataclass
class Sweep:
    """A sweep over seeds, and how its jobs are fanned out (:func:`w2s.launch.fan_out`)."""

    seeds: list[int] = option([], "several seeds (a sweep; overrides seed)", min=0)
    launcher: str = option("none", "fan a sweep out: none (this process), local (one job per "
                           "visible GPU, or --workers CPU processes), ray (a Ray cluster)",
                           choices=list(LAUNCHERS))
    workers: int = option(0, "launcher local without GPUs: CPU worker processes (0 = 1)", min=0)


@dataclass
class Lora:
    """LoRA adapters: rank, scale and the modules they go on."""

    lora_r: int = option(8, "LoRA: adapter rank", min=1)
    lora_alpha: int = option(16, "LoRA: scale numerator (updates are scaled by lora_alpha / "
                             "lora_r)", min=1)
    lora_targets: str = option("auto", "LoRA: modules the adapters go on: auto = the query and "
                               "value projections (q_proj,v_proj; GPT-2's fused c_attn); a comma "
                               "list of module names; or all-linear")


@dataclass
class Judging:
    """Who judges the answers (:mod:`w2s.evaluation.judges`) and how a model judge is batched."""

    judge: str = option("vader", "judge of the answers: vader | reward:NAME | rm:MODEL | "
                        "cls:MODEL:LABEL | llm:MODEL | api:URL[#MODEL]; a reward judge also "
                        "gives the gold reward")
    judge_batch_size: int = option(16, "responses per forward pass of a model judge", min=1)


@dataclass
class Sampling:
    """How answers are sampled; :meth:`sampling_config` gives the generate layer's
    :class:`w2s.models.generate.SamplingConfig`."""

    max_new_tokens: int = option(128, "tokens generated per answer", min=1)
    temperature: float = option(1.0, "sampling temperature; 0 = greedy", min=0)
    top_k: int = option(0, "keep the k most likely tokens; 0 = off (never taken from the "
                        "model's generation_config)", min=0)
    top_p: float = option(1.0, "nucleus sampling mass; 1.0 = off", above=0, max=1)

    def sampling_config(self, **changes: Any):
        """The validated :class:`~w2s.models.generate.SamplingConfig`: this section's fields
        that it has (the four above; ``batch_size`` and ``seed`` too where a derived section
        holds them), then ``changes`` (e.g. ``batch_size=cfg.gen_batch_size, seed=cfg.seed``)."""
        from w2s.models.generate import SamplingConfig

        names = {f.name for f in dataclasses.fields(SamplingConfig)}
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name in names}
        return SamplingConfig(**{**values, **changes}).validate()
