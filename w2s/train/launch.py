"""Setting up and ending a launch: the accelerator, the distributed backends it may ask for
(DDP, FSDP2, DeepSpeed, on GPU or on CPU over gloo), and the launches the loop refuses.

Everything here happens once per process, around the training loop (:mod:`w2s.train.loop`):
:func:`make_accelerator` before the first training, :func:`check_accelerator` at the start of each,
:func:`end_launch` at the very end of a multi-process run.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Any

import torch

from w2s.errors import W2SError
from w2s.train.config import TrainConfig


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
    if launch_kind(accelerator) == "DEEPSPEED":
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


def launch_kind(accelerator) -> str:
    """``FSDP``, ``DEEPSPEED``, or another accelerate distributed type (``NO``, ``MULTI_GPU``...)."""
    return str(getattr(accelerator, "distributed_type", "")).rsplit(".", 1)[-1]


def check_accelerator(accelerator, config: TrainConfig) -> None:
    """Refuse setups that would silently train differently from what the config says."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise W2SError(f"launched as {launched} processes but accelerate sees "
                       f"{accelerator.num_processes}: each process would train alone. Create the "
                       "accelerator with w2s.train.make_accelerator() (it passes cpu=True on "
                       "machines without a GPU)")
    kind = launch_kind(accelerator)
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
