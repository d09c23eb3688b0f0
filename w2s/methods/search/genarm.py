"""GenARM (Xu et al. 2024, arXiv 2410.08193, ICLR 2025): the autoregressive reward model the
``genarm`` decoder adds to the base model, trained as a cached stage of the ``w2s search`` run.

An autoregressive reward model (ARM) is a language model whose log-probs ARE the reward,

    r(x, y) = beta_r * sum_t log pi_r(y_t | x, y_<t),

trained on preference pairs with the Bradley-Terry loss on those rewards and no reference model
(:func:`w2s.train.losses.arm_loss`, run through the shared preference trainer
:func:`w2s.train.train_dpo` with ``objective="arm"``, i.e. the one training loop). Decoding then
samples every token from ``pi_base(y_t) * pi_r(y_t)^alpha`` (alpha = 1/beta of the paper's
KL-regularised objective): the preset ``genarm`` = terms ``(base, 1), (arm, alpha)`` of the
logit engine (:mod:`.logits`).

:func:`plan_arm` checks everything before the run directory exists (a preference task, its rows,
the tokenizer the ARM will have); :func:`arm_model` returns the ARM's folder: ``--genarm-model``
as given, else the cached stage ``search-genarm`` keyed by the initial model's identity, the
preference data's fingerprint, the training settings, beta_r, max_len, the chat setting and the
dtype. A rerun with the same inputs trains nothing (the stage is found; ``compute.json`` marks it
cached); an interrupted training resumes from ``<cache>/inprogress/<key>``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from w2s.errors import W2SError
from w2s.methods.search.config import SearchConfig, genarm_init


def plan_arm(cfg: SearchConfig) -> dict:
    """What the ``genarm`` decoder needs, checked without loading a model: ``{"model": NAME}``
    for ``--genarm-model``, else ``{"init", "task", "rows", "fingerprint"}`` of the training
    stage. One-line :class:`W2SError` for no preference task, a task of another kind, an empty
    split."""
    from w2s.data import load_task

    if cfg.genarm_model.strip():
        return {"model": cfg.genarm_model, "trained": False}
    if not cfg.genarm_task.strip():
        raise W2SError("decoder genarm needs a preference task for its autoregressive reward "
                       "model (--genarm-task, e.g. toy-sentiment-pairs or ultrafeedback), or an "
                       "ARM already trained (--genarm-model PATH)")
    data = load_task(cfg.genarm_task, split=cfg.genarm_split, n=cfg.genarm_n, seed=cfg.seed)
    if data.kind != "preference":
        raise W2SError(f"--genarm-task {cfg.genarm_task} is a {data.kind} task; GenARM's reward "
                       "model learns from preference pairs (prompt, chosen, rejected): pick a "
                       "preference task (`w2s tasks`)")
    if not data.rows:
        raise W2SError(f"--genarm-task {cfg.genarm_task} split '{cfg.genarm_split}' has no "
                       "pairs; pick another split")
    return {"init": genarm_init(cfg), "task": cfg.genarm_task, "rows": data.rows,
            "fingerprint": data.fingerprint(), "trained": True}


def train_config(cfg: SearchConfig):
    """The loop's :class:`w2s.train.TrainConfig` of the ARM (the ``genarm_train`` section)."""
    return cfg.genarm_train.train_config(seed=cfg.seed)


def stage_parts(cfg: SearchConfig, spec: dict) -> dict[str, Any]:
    """Everything that determines the trained ARM: the cache key's parts."""
    from w2s.models import resolve_model
    from w2s.models.resolve import model_identity

    return {"model": model_identity(resolve_model(spec["init"])), "data": spec["fingerprint"],
            "train": dataclasses.asdict(train_config(cfg)), "objective": "arm",
            "beta_r": cfg.genarm_beta_r, "max_len": cfg.genarm_max_len, "chat": cfg.chat,
            "dtype": cfg.dtype}


def arm_model(cfg: SearchConfig, spec: dict, log=None, cache=None) -> str:
    """The ARM's model folder: ``--genarm-model`` as given, else the cached training stage
    (trained now on a miss, through :func:`w2s.train.train_dpo` with ``objective="arm"``, saved
    with ``save_pretrained`` and published to the cache). ``log(record)`` gets the stage record
    (``cached``, ``key``, steps and losses when it trained) and the loop's step records."""
    from w2s.runs import Cache, cached_stage

    log = log or (lambda record: None)
    if not spec.get("trained"):
        log({"stage": "genarm_arm", "cached": None, "model": spec["model"],
             "skipped": "--genarm-model given"})
        return spec["model"]
    cache = cache or Cache()
    with cached_stage(cache, "search-genarm", "genarm_arm", **stage_parts(cfg, spec)) as st:
        if st.done:
            log({"stage": "genarm_arm", "cached": True, "key": st.key, "path": str(st.path)})
            return str(st.path)
        result = _train(cfg, spec, st.progress, log)

        def write(folder: Path) -> None:
            import json

            result["model"].save_pretrained(folder)
            result["tokenizer"].save_pretrained(folder)
            (folder / "train.json").write_text(json.dumps(result["record"], indent=1) + "\n")

        path = st.publish(write, meta={"model": spec["init"], "stage": "genarm ARM",
                                       "task": spec["task"]})
        log({"stage": "genarm_arm", "cached": False, "key": st.key, "path": str(path),
             **{k: result["record"][k] for k in ("steps", "final_loss", "resumed_from")}})
        return str(path)


def _train(cfg: SearchConfig, spec: dict, progress: Path, log) -> dict:
    from w2s.models import load_causal_lm
    from w2s.train import make_accelerator, train_dpo

    config = train_config(cfg)
    accelerator = make_accelerator(config)
    model, tok = load_causal_lm(spec["init"], dtype=cfg.dtype, device=accelerator.device,
                                seed=cfg.seed)
    result = train_dpo(model, tok, spec["rows"], config, objective="arm",
                       beta=cfg.genarm_beta_r, max_len=cfg.genarm_max_len, chat=cfg.chat,
                       ref_batch_size=cfg.score_batch_size, checkpoint_dir=progress,
                       accelerator=accelerator, description="GenARM reward model",
                       log=lambda rec: log({"stage": "genarm_arm", **rec}))
    model.eval()
    record = {"steps": result.steps, "final_loss": result.final_loss,
              "resumed_from": result.resumed_from, "init": spec["init"], "task": spec["task"],
              "pairs": len(spec["rows"]), "beta_r": cfg.genarm_beta_r}
    return {"model": model, "tokenizer": tok, "record": record}
