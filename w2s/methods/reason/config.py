"""The config of ``w2s reason`` (torch-free): :class:`ReasonConfig` and its validation."""

from __future__ import annotations

from typing import Any

from w2s.config import config_class, option, section
from w2s.config import validate as validate_config
from w2s.errors import W2SError
from w2s.methods.sections import Lora, Runtime, stage_train

MODES = ("lora", "full")
SUPERVISION = ("sft", "few-shot", "zero-shot")
SELECTIONS = ("consistency", "all")
STAGE2 = ("dpo", "orpo", "none")
STAGE1_DATA = ("hybrid", "weak", "icl")
PAIR_MODES = ("paper", "self")

WeakSFT = stage_train(
    "WeakSFT", "How the weak supervisor is fine-tuned on the gold solutions of its half "
    "(defaults: lr 1e-4, 3 epochs, cosine, warm-up 0.03).", module=__name__, lr=1e-4, epochs=3.0,
    batch_size=32, micro_batch_size=4, warmup_ratio=0.03)
StrongSFT = stage_train(
    "StrongSFT", "How each strong model of stage I (and the gold ceiling, and full weak "
    "fine-tuning) is fine-tuned; always from the strong base (defaults: lr 1e-4, 3 epochs).",
    module=__name__, lr=1e-4, epochs=3.0, batch_size=32, micro_batch_size=4, warmup_ratio=0.03)
PrefTrain = stage_train(
    "PrefTrain", "How stage II (DPO or ORPO) trains the stage-I model (defaults: lr 5e-6, "
    "1 epoch, warm-up 0.1).", module=__name__, lr=5e-6, epochs=1.0, batch_size=32,
    micro_batch_size=4, warmup_ratio=0.1)


@config_class
class ReasonConfig:
    """``w2s reason``: weak-to-strong reasoning (Yang et al.), exact-answer accuracy and PGR.

    Inline sections (flags and recipe keys at the top level): ``lora`` (lora_r, lora_alpha,
    lora_targets),
    ``runtime`` (dtype, seed, run_dir; the device is the launcher's).
    """

    weak: str = option("llama-2-7b", "weak supervisor: alias, local dir, hub id or tiny:...")
    strong: str = option("llama-2-70b", "strong model: sees the questions of its half only, "
                         "never a gold solution (but for the ceiling)")
    task: str = option("gsm8k", "reasoning task (`w2s tasks`: gsm8k, math, toy-arithmetic) or "
                       "local:PATH#reasoning ({prompt, solution, answer} rows)")
    n_weak_train: int | None = option(None, "train_1: problems whose GOLD solutions the weak "
                                      "model learns from; none = half the train split", min=1)
    n_w2s: int | None = option(None, "train_2: problems the strong model learns on, their gold "
                               "hidden (but for the ceiling); none = the rest", min=1)
    n_test: int | None = option(None, "test problems every model answers; none = all", min=1)
    weak_supervision: str = option("sft", "sft: the weak model fine-tuned on train_1's gold "
                                   "solutions (the paper); few-shot: the weak model as it is, "
                                   "prompted with weak_shots gold solutions of train_1; "
                                   "zero-shot: as it is, no gold at all (the paper's "
                                   "OlympicArena setting, an instruct model as supervisor)",
                                   choices=list(SUPERVISION))
    weak_shots: int = option(4, "few-shot weak supervision: demonstrations per prompt", min=1)
    icl_shots: int = option(4, "the strong model's in-context answers (stage I): demonstrations, "
                            "weak solutions of train_2 problems (right or wrong), one fixed "
                            "draw for every prompt as the authors' 4-shot template", min=1)
    selection: str = option("consistency", "stage I data: consistency = only the problems where "
                            "the weak solution's final answer equals the strong model's "
                            "in-context one (the paper); all = every weak solution (full weak "
                            "fine-tuning, one round)", choices=list(SELECTIONS))
    stage1_data: str = option("hybrid", "what the final stage-I model trains on: the kept "
                              "problems' weak solutions, their in-context solutions, or both "
                              "(hybrid)", choices=list(STAGE1_DATA))
    iterations: int = option(2, "stage I rounds: round t+1 keeps the problems where the two "
                             "models of round t (trained on the weak and on the in-context "
                             "side) agree, and retrains from the strong base", min=1)
    full_weak_baseline: bool = option(True, "also train the strong model on every weak "
                                      "solution (full weak fine-tuning, the paper's baseline)")
    stage2: str = option("dpo", "stage II: dpo or orpo on contrastive samples the stage-I model "
                         "finds itself, or none", choices=list(STAGE2))
    pairs: str = option("paper", "stage II pairs: paper = the weak solution against a sample "
                        "that disagrees with it (or a confident majority sample against it), "
                        "as the authors' code; self = a majority sample against a minority one",
                        choices=list(PAIR_MODES))
    n_samples: int = option(10, "stage II: solutions sampled per train_2 problem", min=2)
    sample_temperature: float = option(1.0, "stage II: their temperature", above=0)
    min_confidence: float = option(0.6, "stage II: a problem gives pairs only when its majority "
                                   "answer has at least this share of the samples", min=0, max=1)
    flip_confidence: float = option(0.8, "stage II, paper pairs: the share a majority needs to "
                                    "be chosen AGAINST the weak solution", min=0, max=1)
    max_pairs: int = option(1, "stage II: pairs per problem at most (the authors: 1 on GSM8K, 3 "
                            "on MATH)", min=1)
    beta: float = option(0.1, "DPO's beta, or ORPO's odds-ratio weight (> 0)", above=0)
    mode: str = option("lora", "lora adapters or full fine-tuning, for every training",
                       choices=list(MODES))
    lora: Lora = section(Lora, "lora: the adapters (the authors: all seven projections of a "
                         "Llama block, lora_targets all-linear)", inline=True)
    max_len: int = option(1024, "tokens per prompt + solution when training", min=8)
    max_new_tokens: int = option(512, "tokens per generated solution", min=1)
    chat: bool = option(False, "wrap prompts in the chat template (the paper: base models, the "
                        "plain 'Question: ...\\nAnswer:' template)")
    gen_batch_size: int = option(16, "prompts per generate call", min=1)
    score_batch_size: int = option(16, "rows per forward pass when scoring (DPO's reference)",
                                   min=1)
    n_boot: int = option(1000, "bootstrap resamples of the accuracy and PGR intervals", min=0)
    runtime: Runtime = section(Runtime, "dtype, seed, run directory", inline=True,
                               drop=("device",))
    weak_sft: WeakSFT = section(WeakSFT, "SFT of the weak supervisor on train_1")
    strong_sft: StrongSFT = section(StrongSFT, "SFT of every strong model of stage I, the "
                                    "ceiling and the baseline")
    pref: PrefTrain = section(PrefTrain, "stage II: DPO / ORPO of the stage-I model")

    def check(self) -> None:
        """The rules across fields (:func:`w2s.config.validate` runs it after the bounds)."""
        precisions = {s.mixed_precision for s in (self.weak_sft, self.strong_sft, self.pref)}
        if len(precisions) > 1:
            raise W2SError(f"weak_sft, strong_sft and pref set different mixed_precision "
                           f"({sorted(precisions)}); one process runs one precision, so set "
                           "them the same")
        if self.flip_confidence < self.min_confidence:
            raise W2SError(f"flip_confidence ({self.flip_confidence}) is below min_confidence "
                           f"({self.min_confidence}); a flip needs at least the confidence of "
                           "any pair: raise --flip-confidence")


def validate(cfg: ReasonConfig) -> None:
    """One-line :class:`W2SError` for every setting that cannot work (nothing loaded)."""
    validate_config(cfg)
    for stage in (cfg.weak_sft, cfg.strong_sft, cfg.pref):
        stage.train_config(seed=cfg.seed)


def lora_targets(cfg: ReasonConfig) -> list[str] | str | None:
    """``lora_targets`` as :class:`w2s.models.LoraSettings` takes it: None for auto (the
    registry's targets), ``"all-linear"``, or a list of module names."""
    text = cfg.lora_targets.strip()
    if text.lower() in ("auto", ""):
        return None
    return text if text == "all-linear" else [t.strip() for t in text.split(",") if t.strip()]


def rounds(cfg: ReasonConfig) -> int:
    """Stage I rounds that run: ``iterations``, or 1 when every weak solution is kept."""
    return 1 if cfg.selection == "all" else cfg.iterations


def config_summary(cfg: ReasonConfig) -> dict[str, Any]:
    """The settings metrics.json repeats next to the figures."""
    return {"weak": cfg.weak, "strong": cfg.strong, "task": cfg.task,
            "weak_supervision": cfg.weak_supervision, "selection": cfg.selection,
            "stage1_data": cfg.stage1_data, "iterations": rounds(cfg), "stage2": cfg.stage2,
            "pairs": cfg.pairs, "mode": cfg.mode}
