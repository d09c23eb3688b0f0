"""The config of ``w2s wspo`` (torch-free): :class:`WSPOConfig` and its validation."""


from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from w2s.config import option, section, stage_train
from w2s.errors import W2SError

GRANULARITIES = ("token", "sequence")
MODES = ("lora", "full")
DEFAULT_JUDGE = "rm:OpenAssistant/reward-model-deberta-v3-large-v2"


StageTrain = stage_train(
    "StageTrain", "How one model is trained (the WSPO authors' defaults: LoRA lr 5e-6, 3 epochs, "
    "cosine, warm-up 0.1).", module=__name__, lr=5e-6, epochs=3.0, micro_batch_size=4,
    warmup_ratio=0.1, checkpoint_every=100,
    help={"lr": "peak learning rate (the authors: 5e-6 with LoRA, 1e-5 for full fine-tuning)"})


@dataclass
class WSPOConfig:
    """``w2s wspo``: weak-to-strong preference optimization."""

    weak: str = option("qwen2-1.5b-instruct", "weak model BEFORE alignment (pi_w_ref): alias, "
                       "local dir, hub id or tiny:...")
    weak_aligned: str | None = option(None, "weak model AFTER alignment (pi_w_r); none = align "
                                      "--weak by DPO on --task first (cached: done once)")
    strong: str = option("qwen2-7b-instruct", "strong model to align; its starting point is the "
                         "reference pi_ref")
    task: str = option("ultrafeedback", "preference task (`w2s tasks`) or local:PATH: its train "
                       "pairs align the weak model, their CHOSEN responses train the strong one, "
                       "its test prompts evaluate")
    n_train: int | None = option(None, "training pairs (a seeded sample); none = all")
    n_eval: int = option(500, "held-out test prompts the strong model answers before and after "
                         "training (a warning below 500)")
    samples_per_prompt: int = option(1, "evaluation: answers sampled per prompt, before and "
                                     "after (more pairs, less sampling noise on few prompts)")
    single_turn: bool = option(False, "keep only single-turn conversations (Anthropic-HH "
                               "transcripts with one Human turn)")
    gamma: float = option(0.1, "WSPO: the strong log-ratio is driven to 1/gamma times the weak "
                          "one (> 0)")
    granularity: str = option("token", "token: per-token log-ratios (one shared tokenizer, "
                              "checked); sequence: length-normalised sequence log-ratios (any "
                              "two tokenizers)", choices=list(GRANULARITIES))
    mode: str = option("lora", "lora adapters (reference = adapters disabled) or full "
                       "fine-tuning (reference = the initial model's log-probs, precomputed); "
                       "for the weak DPO and WSPO alike", choices=list(MODES))
    lora_r: int = option(8, "lora: adapter rank")
    lora_alpha: int = option(16, "lora: adapter scale numerator")
    beta: float = option(0.1, "weak DPO: beta (strength of the KL anchor to --weak)")
    max_len: int = option(1024, "tokens per prompt + response: prompts are cut from the left "
                          "(keeping half), then responses from the right")
    chat: bool = option(True, "wrap prompts in the model's chat template when its tokenizer has "
                        "one (Anthropic-HH transcripts are used as they are)")
    judge: str = option(DEFAULT_JUDGE, "who compares the strong model after vs before: vader | "
                        "reward:NAME | rm:MODEL | cls:MODEL:LABEL | llm:MODEL | api:URL[#MODEL]; "
                        "a reward judge also gives the gold reward")
    max_new_tokens: int = option(512, "evaluation: tokens generated per prompt")
    temperature: float = option(0.7, "evaluation: sampling temperature (0 = greedy)")
    top_p: float = option(1.0, "evaluation: nucleus sampling mass (1 = off)")
    top_k: int = option(0, "evaluation: top-k sampling (0 = off)")
    gen_batch_size: int = option(16, "evaluation: prompts per generate call")
    score_batch_size: int = option(16, "rows per forward pass when precomputing log-probs")
    seed: int = option(0, "seed of the data samples, training and sampling")
    backend: str = option("hf", "evaluation answers: hf (transformers, batched, KV cache) or "
                          "vllm (the optional extra, on a CUDA GPU; without it: a message and "
                          "hf)", choices=["hf", "vllm"])
    save_model: bool = option(True, "write the WSPO-trained strong model (LoRA merged) to "
                              "<run>/model")
    dtype: str = option("auto", "auto (bf16 on CUDA, fp32 elsewhere), bf16, fp16 or fp32")
    run_dir: str | None = option(None, "run directory (default runs/wspo/<time>-<hash>)")
    dry_run: bool = option(False, "print the resolved plan (models, data, stages, what is "
                           "cached) and exit without loading any weights")
    weak_dpo: StageTrain = section(StageTrain, "DPO of the weak model (skipped with "
                                   "--weak-aligned)")
    strong_train: StageTrain = section(StageTrain, "WSPO training of the strong model")



def validate(cfg: WSPOConfig) -> None:
    """One-line :class:`W2SError` for every setting that cannot work (no model or data touched)."""
    if not 0 < cfg.gamma < math.inf:
        raise W2SError(f"gamma must be > 0 and finite (the strong log-ratio is driven to 1/gamma "
                       f"times the weak one), got {cfg.gamma}")
    if cfg.granularity not in GRANULARITIES:
        raise W2SError(f"granularity must be one of {list(GRANULARITIES)}, got "
                       f"{cfg.granularity!r}")
    if cfg.mode not in MODES:
        raise W2SError(f"mode must be one of {list(MODES)}, got {cfg.mode!r}")
    if not 0 < cfg.beta < math.inf:
        raise W2SError(f"beta (weak DPO) must be > 0 and finite, got {cfg.beta}")
    if cfg.n_train is not None and cfg.n_train < 1:
        raise W2SError(f"n_train must be at least 1 (or none for all), got {cfg.n_train}")
    for key in ("n_eval", "samples_per_prompt", "lora_r", "lora_alpha", "gen_batch_size", "score_batch_size"):
        if getattr(cfg, key) < 1:
            raise W2SError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.max_len < 8:
        raise W2SError(f"max_len must be at least 8 tokens, got {cfg.max_len}")
    if cfg.weak_dpo.mixed_precision != cfg.strong_train.mixed_precision:
        raise W2SError(f"weak_dpo.mixed_precision ({cfg.weak_dpo.mixed_precision}) and "
                       f"strong_train.mixed_precision ({cfg.strong_train.mixed_precision}) differ; "
                       "one process runs one precision, so set both the same")
    for stage in (cfg.weak_dpo, cfg.strong_train):
        stage_train_config(stage, cfg.seed)
    sampling(cfg)
    from w2s.evaluation.judges import parse_judge

    parse_judge(cfg.judge)


def stage_train_config(stage: StageTrain, seed: int):
    """The loop's :class:`w2s.train.TrainConfig` for one stage (seed set), validated."""
    return stage.train_config(seed=seed)


def sampling(cfg: WSPOConfig):
    """The evaluation's :class:`w2s.models.generate.SamplingConfig`, validated."""
    from w2s.models.generate import SamplingConfig

    return SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                          top_k=cfg.top_k, top_p=cfg.top_p, batch_size=cfg.gen_batch_size,
                          seed=cfg.seed).validate()


def config_summary(cfg: WSPOConfig) -> dict[str, Any]:
    """The settings metrics.json repeats next to the figures."""
    return {"weak": cfg.weak, "weak_aligned": cfg.weak_aligned, "strong": cfg.strong,
            "task": cfg.task, "gamma": cfg.gamma, "granularity": cfg.granularity,
            "mode": cfg.mode, "judge": cfg.judge}
