"""The one training loop (:func:`train`) every method trains through, its losses, and the
preference-training stages built on them.

See :mod:`w2s.train.loop` for how batches, gradient accumulation, processes and resuming work;
its settings are :mod:`w2s.train.config`, its backends (DDP, FSDP2, DeepSpeed)
:mod:`w2s.train.backends`, launch set-up :mod:`w2s.train.launch` and checkpoint files
:mod:`w2s.train.checkpoint`. :mod:`w2s.train.losses` holds the pure loss functions, and
:mod:`w2s.train.preference` SFT, DPO, SimPO, ORPO, GenARM's ARM and reward modelling (shared by WSPO, MACPO and the
deception experiments).
"""

from w2s.train.checkpoint import load_trained, read_checkpoint
from w2s.train.config import TrainConfig, TrainResult, lr_lambda
from w2s.train.launch import end_launch, make_accelerator
from w2s.train.loop import Step, train, unwrap
from w2s.train.losses import (
    arm_loss,
    dpo_loss,
    lm_loss,
    logconf_loss,
    orpo_loss,
    product_loss,
    reward_model_loss,
    sft_loss,
    simpo_loss,
    wspo_loss,
    xent_loss,
)
from w2s.train.preference import train_dpo, train_reward_model, train_sft

__all__ = ["TrainConfig", "TrainResult", "Step", "train", "lr_lambda", "make_accelerator", "end_launch",
           "unwrap",
           "read_checkpoint", "load_trained", "lm_loss", "sft_loss", "dpo_loss", "simpo_loss", "arm_loss",
           "orpo_loss",
           "wspo_loss", "reward_model_loss", "xent_loss", "logconf_loss", "product_loss",
           "train_sft", "train_dpo", "train_reward_model"]
