"""The config of ``w2s weak-label`` (torch-free): :class:`WeakLabelConfig` and its validation."""

from __future__ import annotations

from typing import Any

from w2s.config import config_class, derive, option, section
from w2s.config import validate as validate_config
from w2s.errors import W2SError
from w2s.methods.sections import Judging, Lora, Runtime, Sampling, stage_train

MODES = ("lora", "full")
DEFAULT_JUDGE = "rm:OpenAssistant/reward-model-deberta-v3-large-v2"

StageTrain = stage_train(
    "StageTrain", "How one model is trained by DPO (defaults: lr 1e-5, 1 epoch, cosine, warm-up "
    "0.1; the paper recipe sets its own).", module=__name__, lr=1e-5, epochs=1.0,
    micro_batch_size=4, warmup_ratio=0.1, checkpoint_every=100)

WeakLabelSampling = derive(Sampling, "WeakLabelSampling", "How the strong models answer the "
                           "evaluation prompts.", module=__name__, max_new_tokens=256,
                           temperature=0.7)
WeakLabelJudging = derive(Judging, "WeakLabelJudging", "Who compares the strong models' answers "
                          "(a reward judge also gives the gold reward).", module=__name__,
                          judge=DEFAULT_JUDGE)


@config_class
class WeakLabelConfig:
    """``w2s weak-label``: a DPO-aligned weak model labels preference pairs for the strong one.

    Inline sections (flags and recipe keys at the top level): ``lora`` (lora_r, lora_alpha),
    ``judging`` (judge, judge_batch_size), ``sampling`` (max_new_tokens, temperature, top_k,
    top_p), ``runtime`` (dtype, seed, run_dir; the device is the launcher's).
    """

    weak: str = option("opt-125m", "weak model (the annotator before alignment, pi_w_ref): "
                       "alias, local dir, hub id or tiny:...")
    strong: str = option("opt-1.3b", "strong model, trained by DPO on the weak labels (and, for "
                         "the ceiling, on the gold labels); its start is the baseline")
    task: str = option("hh-helpful", "preference task (`w2s tasks`) or local:PATH: its train split "
                       "is cut into the labelled and the unlabelled split, its test prompts "
                       "evaluate")
    n_labelled: int = option(1000, "LABELLED pairs (gold labels) the weak model is aligned on",
                             min=1)
    n_unlabelled: int | None = option(None, "UNLABELLED pairs the weak model labels (gold labels "
                                      "hidden from training; kept for the agreement and the "
                                      "ceiling); none = all the train pairs left", min=1)
    n_eval: int = option(500, "held-out test prompts the strong models answer", min=1)
    samples_per_prompt: int = option(1, "evaluation: answers sampled per prompt", min=1)
    beta: float = option(0.1, "weak DPO's beta, and the beta of the implicit reward "
                         "beta * log(pi_w / pi_w_ref) that labels the pairs (> 0)", above=0)
    strong_beta: float = option(0.1, "strong DPO's beta, on weak and on gold labels alike (> 0)",
                                above=0)
    confidence_weighting: bool = option(False, "CW-PO: weight each pair's strong DPO loss by the "
                                        "weak annotator's confidence p = sigmoid(margin)")
    confidence_threshold: float = option(0.5, "keep only weak-labelled pairs with p >= this "
                                         "(0.5 keeps all; p is in [0.5, 1))", min=0.5, below=1)
    n_bins: int = option(5, "confidence bins (quantiles of p) of the agreement table", min=1)
    mode: str = option("lora", "lora adapters (reference = adapters disabled) or full fine-tuning "
                       "(reference = the initial model's log-probs, precomputed); for every DPO",
                       choices=list(MODES))
    lora: Lora = section(Lora, "lora: the adapters", inline=True, drop=("lora_targets",))
    max_len: int = option(512, "tokens per prompt + response: prompts are cut from the left "
                          "(keeping half), then responses from the right", min=8)
    chat: bool = option(True, "wrap prompts in the model's chat template when its tokenizer has "
                        "one (Anthropic-HH transcripts are used as they are)")
    judging: Judging = section(WeakLabelJudging, "who compares the strong models' answers",
                               inline=True)
    sampling: Sampling = section(WeakLabelSampling, "evaluation: how the strong models answer",
                                 inline=True)
    gen_batch_size: int = option(16, "evaluation: prompts per generate call", min=1)
    score_batch_size: int = option(16, "rows per forward pass when scoring log-probs", min=1)
    runtime: Runtime = section(Runtime, "dtype, seed, run directory", inline=True,
                               drop=("device",))
    weak_dpo: StageTrain = section(StageTrain, "DPO of the weak model on the labelled split")
    strong_dpo: StageTrain = section(StageTrain, "DPO of the strong model (weak labels, and the "
                                     "gold-label ceiling)")

    def check(self) -> None:
        """The rules across fields (:func:`w2s.config.validate` runs it after the bounds)."""
        if self.weak_dpo.mixed_precision != self.strong_dpo.mixed_precision:
            raise W2SError(f"weak_dpo.mixed_precision ({self.weak_dpo.mixed_precision}) and "
                           f"strong_dpo.mixed_precision ({self.strong_dpo.mixed_precision}) "
                           "differ; one process runs one precision, so set both the same")


def validate(cfg: WeakLabelConfig) -> None:
    """One-line :class:`W2SError` for every setting that cannot work (nothing loaded): the
    bounds and choices, the training stages, the sampling settings and the judge."""
    validate_config(cfg)
    for stage in (cfg.weak_dpo, cfg.strong_dpo):
        stage.train_config(seed=cfg.seed)
    sampling(cfg)
    from w2s.evaluation.judges import parse_judge

    parse_judge(cfg.judge)


def sampling(cfg: WeakLabelConfig):
    """The evaluation's :class:`w2s.models.generate.SamplingConfig`, validated."""
    return cfg.sampling.sampling_config(batch_size=cfg.gen_batch_size, seed=cfg.seed)


def config_summary(cfg: WeakLabelConfig) -> dict[str, Any]:
    """The settings metrics.json repeats next to the figures."""
    return {"weak": cfg.weak, "strong": cfg.strong, "task": cfg.task, "beta": cfg.beta,
            "strong_beta": cfg.strong_beta, "confidence_weighting": cfg.confidence_weighting,
            "confidence_threshold": cfg.confidence_threshold, "mode": cfg.mode,
            "judge": cfg.judge}
