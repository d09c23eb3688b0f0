"""The config of ``w2s wspo`` (torch-free): :class:`WSPOConfig` and its validation."""


from __future__ import annotations

from typing import Any

from w2s.config import config_class, derive, option, section
from w2s.config import validate as validate_config
from w2s.errors import W2SError
from w2s.methods.sections import Judging, Lora, Runtime, Sampling, stage_train

GRANULARITIES = ("token", "sequence")
MODES = ("lora", "full")
DEFAULT_JUDGE = "rm:OpenAssistant/reward-model-deberta-v3-large-v2"


StageTrain = stage_train(
    "StageTrain", "How one model is trained (the WSPO authors' defaults: LoRA lr 5e-6, 3 epochs, "
    "cosine, warm-up 0.1).", module=__name__, lr=5e-6, epochs=3.0, micro_batch_size=4,
    warmup_ratio=0.1, checkpoint_every=100,
    help={"lr": "peak learning rate (the authors: 5e-6 with LoRA, 1e-5 for full fine-tuning)"})


WSPOSampling = derive(Sampling, "WSPOSampling", "How the strong model answers the evaluation "
                      "prompts, before and after training.", module=__name__,
                      max_new_tokens=512, temperature=0.7)
WSPOJudging = derive(Judging, "WSPOJudging", "Who compares the strong model after vs before "
                     "training.", module=__name__, judge=DEFAULT_JUDGE)


@config_class
class WSPOConfig:
    """``w2s wspo``: weak-to-strong preference optimization.

    Inline sections (flags and recipe keys at the top level): ``lora`` (lora_r, lora_alpha),
    ``judging`` (judge), ``sampling`` (max_new_tokens, temperature, top_k, top_p of the
    evaluation answers), ``runtime`` (dtype, seed, run_dir; the device is the launcher's).
    """

    weak: str = option("qwen2-1.5b-instruct", "weak model BEFORE alignment (pi_w_ref): alias, "
                       "local dir, hub id or tiny:...")
    weak_aligned: str | None = option(None, "weak model AFTER alignment (pi_w_r); none = align "
                                      "--weak by DPO on --task first (cached: done once)")
    strong: str = option("qwen2-7b-instruct", "strong model to align; its starting point is the "
                         "reference pi_ref")
    task: str = option("ultrafeedback", "preference task (`w2s tasks`) or local:PATH: its train "
                       "pairs align the weak model, their CHOSEN responses train the strong one, "
                       "its test prompts evaluate")
    n_train: int | None = option(None, "training pairs (a seeded sample); none = all", min=1)
    n_eval: int = option(500, "held-out test prompts the strong model answers before and after "
                         "training (a warning below 500)", min=1)
    samples_per_prompt: int = option(1, "evaluation: answers sampled per prompt, before and "
                                     "after (more pairs, less sampling noise on few prompts)",
                                     min=1)
    single_turn: bool = option(False, "keep only single-turn conversations (Anthropic-HH "
                               "transcripts with one Human turn)")
    gamma: float = option(0.1, "WSPO: the strong log-ratio is driven to 1/gamma times the weak "
                          "one (> 0)", above=0)
    granularity: str = option("token", "token: per-token log-ratios (one shared tokenizer, "
                              "checked); sequence: length-normalised sequence log-ratios (any "
                              "two tokenizers)", choices=list(GRANULARITIES))
    mode: str = option("lora", "lora adapters (reference = adapters disabled) or full "
                       "fine-tuning (reference = the initial model's log-probs, precomputed); "
                       "for the weak DPO and WSPO alike", choices=list(MODES))
    lora: Lora = section(Lora, "lora: the adapters", inline=True, drop=("lora_targets",))
    beta: float = option(0.1, "weak DPO: beta (strength of the KL anchor to --weak); 0.1 is "
                         "TRL's default, the WSPO authors' example config uses 0.01 (the paper "
                         "recipes do)", above=0)
    max_len: int = option(1024, "tokens per prompt + response: prompts are cut from the left "
                          "(keeping half), then responses from the right", min=8)
    chat: bool = option(True, "wrap prompts in the model's chat template when its tokenizer has "
                        "one (Anthropic-HH transcripts are used as they are)")
    judging: Judging = section(WSPOJudging, "who compares the strong model after vs before",
                               inline=True, drop=("judge_batch_size",))
    sampling: Sampling = section(WSPOSampling, "evaluation: how the strong model answers",
                                 inline=True)
    gen_batch_size: int = option(16, "evaluation: prompts per generate call", min=1)
    score_batch_size: int = option(16, "rows per forward pass when precomputing log-probs",
                                   min=1)
    backend: str = option("hf", "evaluation answers: hf (transformers, batched, KV cache) or "
                          "vllm (the optional extra, on a CUDA GPU; without it: a message and "
                          "hf)", choices=["hf", "vllm"])
    save_model: bool = option(True, "write the WSPO-trained strong model (LoRA merged) to "
                              "<run>/model")
    runtime: Runtime = section(Runtime, "dtype, seed, run directory", inline=True,
                               drop=("device",))
    dry_run: bool = option(False, "print the resolved plan (models, data, stages, what is "
                           "cached) and exit without loading any weights")
    weak_dpo: StageTrain = section(StageTrain, "DPO of the weak model (skipped with "
                                   "--weak-aligned)")
    strong_train: StageTrain = section(StageTrain, "WSPO training of the strong model")

    def check(self) -> None:
        """The rules across fields (:func:`w2s.config.validate` runs it after the bounds)."""
        if self.weak_dpo.mixed_precision != self.strong_train.mixed_precision:
            raise W2SError(f"weak_dpo.mixed_precision ({self.weak_dpo.mixed_precision}) and "
                           f"strong_train.mixed_precision ({self.strong_train.mixed_precision}) "
                           "differ; one process runs one precision, so set both the same")


def validate(cfg: WSPOConfig) -> None:
    """One-line :class:`W2SError` for every setting that cannot work (no model or data touched):
    what :func:`w2s.config.validate` refuses (gamma and beta > 0 and finite, sizes, choices,
    precisions that differ), then the training stages, the sampling settings and the judge."""
    validate_config(cfg)
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
    return cfg.sampling.sampling_config(batch_size=cfg.gen_batch_size, seed=cfg.seed)


def config_summary(cfg: WSPOConfig) -> dict[str, Any]:
    """The settings metrics.json repeats next to the figures."""
    return {"weak": cfg.weak, "weak_aligned": cfg.weak_aligned, "strong": cfg.strong,
            "task": cfg.task, "gamma": cfg.gamma, "granularity": cfg.granularity,
            "mode": cfg.mode, "judge": cfg.judge}
