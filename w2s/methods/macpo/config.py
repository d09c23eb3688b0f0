"""The config of ``w2s macpo`` (torch-free): :class:`MACPOConfig` and its validation."""


from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from w2s.config import option, section, stage_train
from w2s.errors import W2SError, did_you_mean

FILTER_RULES = ("lowest", "lowest-global", "threshold", "none")
"""How the perplexity filter picks the chosen answers among a learner's candidates (see
:func:`w2s.methods.macpo.experiment.perplexity_filter`)."""
REFERENCES = ("previous", "base")
QUANTIZE = ("none", "4bit", "8bit")


SFTTrain = stage_train(
    "SFTTrain", "How the agents are initialised by supervised fine-tuning (the authors' SFT "
    "script).", module=__name__, lr=5e-5, epochs=3.0,
    help={"lr": "peak learning rate of the LoRA adapters", "epochs": "passes over the SFT data"})


DPOTrain = stage_train(
    "DPOTrain", "How each learner's positive agent is trained in an iteration (the authors' DPO "
    "script).", module=__name__, lr=1e-5, epochs=1.0, batch_size=16, micro_batch_size=4,
    help={"lr": "peak learning rate of the LoRA adapters",
          "epochs": "passes over the iteration's pairs",
          "batch_size": "global batch (pairs per step)",
          "micro_batch_size": "pairs per forward pass per device (each pair is two sequences)"})


@dataclass
class Generation:
    """How every agent samples its answers (the authors' generation settings)."""

    max_new_tokens: int = field(default=512, metadata={"help": "tokens generated per answer"})
    temperature: float = field(default=0.95, metadata={"help": "softmax temperature; 0 = greedy"})
    top_k: int = field(default=0, metadata={"help": "keep the k most likely tokens; 0 = off"})
    top_p: float = field(default=0.7, metadata={"help": "nucleus sampling mass; 1.0 = off"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generate call"})
    seed: int = field(default=0, metadata={
        "help": "sampling seed (iteration t samples Q_w2s answers with seed + t)"})
    backend: str = field(default="hf", metadata={
        "help": "hf (transformers, batched, KV cache) or vllm (pip install 'w2s[vllm]', a GPU, "
                "models from a hub id or folder, no --quantize): one LoRA engine per base "
                "model, every agent an adapter on it; falls back to hf with a warning"})
    vllm_memory: float = field(default=0.4, metadata={
        "help": "vllm: the GPU memory fraction its engines may take (the model being trained "
                "shares the GPU)"})



@dataclass
class MACPOConfig:
    """``w2s macpo``: weak teachers and a strong student align each other (Lyu et al. 2025)."""

    weak: str = option("meta-llama/Llama-2-7b-hf,mistral-7b,llama-3-8b",
                       "the K weak teachers, a comma list (alias, local dir, hub id or tiny:...); "
                       "each becomes a positive and a negative LoRA agent over one copy of it")
    strong: str = option("meta-llama/Llama-2-70b-hf", "the strong student (one model)")
    task: str = option("hh-helpful", "preference task (`w2s tasks`): train rows give the labeled "
                       "half and the unlabeled prompts Q_w2s, test prompts the evaluation")
    iterations: int = option(3, "MACPO iterations T (generate, filter, pair, train, evaluate)")
    n_train: int = option(10000, "training rows, split by prompt into the labeled half (the "
                          "weak teachers' SFT data) and the unlabeled half (Q_w2s, prompts only)")
    n_test: int = option(2000, "test rows; their distinct prompts are answered and judged")
    seed: int = option(0, "seed of the data sample and split, adapter initialisation, training")
    filter_rule: str = option("lowest", "perplexity filter under the learner's positive agent: "
                              "lowest = per prompt the k least perplexing candidates; "
                              "lowest-global = the k least perplexing of all; threshold = those "
                              "with perplexity <= max_perplexity; none = every candidate",
                              choices=list(FILTER_RULES))
    filter_k: int = option(1, "lowest / lowest-global: how many candidates to keep")
    max_perplexity: float | None = option(None, "threshold: keep candidates with perplexity <= "
                                          "this (perplexities are >= 1)")
    skip_empty: bool = option(False, "when the filter leaves a learner no pairs, skip its "
                              "training in that iteration with a warning instead of stopping")
    beta: float = option(0.1, "DPO beta")
    ftx: float = option(0.2, "weight of the SFT term on the chosen answer added to DPO")
    dpo_reference: str = option("previous", "DPO's reference model: previous = the learner's "
                                "adapter as it was before this iteration; base = adapters "
                                "disabled (what a LoRA DPO run without a reference model uses)",
                                choices=list(REFERENCES))
    strong_neg_epochs: float = option(1.0, "epochs of the strong negative agent's SFT on the weak "
                                      "negative agents' answers, continued from the strong "
                                      "positive agent (the authors' script: 1)")
    lora_r: int = option(8, "LoRA rank of every agent")
    lora_alpha: int = option(16, "LoRA scale numerator")
    lora_targets: str = option("auto", "modules the adapters go on: auto = the query and value "
                               "projections (q_proj,v_proj; GPT-2's fused c_attn), as the "
                               "authors; a comma list of module names; or all-linear")
    max_len: int = option(1024, "tokens of prompt + response in training and scoring (the "
                          "prompt is cut from the left first)")
    judge: str = option("rm:OpenAssistant/reward-model-deberta-v3-large-v2",
                        "win-rate judge (vader, reward:NAME, rm:MODEL, cls:MODEL:LABEL, "
                        "llm:MODEL, api:URL#MODEL) or none (test answers are still written for "
                        "`w2s eval winrate`)")
    gold_judge: str = option("", "reward judge whose mean score is the gold reward; empty = the "
                             "judge itself when it is a reward")
    eval_teachers: bool = option(True, "also judge every teacher's answers against the baseline")
    quantize: str = option("none", "load every base model in 4bit or 8bit (bitsandbytes, CUDA): "
                           "QLoRA agents", choices=list(QUANTIZE))
    dtype: str = option("auto", "auto (bf16 on CUDA, fp32 elsewhere), bf16, fp16 or fp32")
    run_dir: str | None = option(None, "run directory (default runs/macpo/<time>-<hash>); an "
                                 "unfinished one is resumed")
    sft: SFTTrain = section(SFTTrain, "initialisation of the agents by SFT")
    dpo: DPOTrain = section(DPOTrain, "the learners' DPO + SFT training in each iteration")
    generation: Generation = section(Generation, "how the agents sample answers")



def names(text: str) -> list[str]:
    return [n.strip() for n in str(text).split(",") if n.strip()]


def check_config(cfg: MACPOConfig) -> dict:
    """Validate every setting; return the plan (teacher models, learner names).

    Raises a one-line :class:`W2SError` for: no teachers, a teacher listed twice or equal to the
    student, zero iterations, filter settings that can keep nothing, bad training or sampling
    settings, DPO and SFT stages with different precisions, an unparsable judge.
    """
    from w2s.evaluation.judges import parse_judge
    from w2s.models import resolve_model

    weak = names(cfg.weak)
    if not weak:
        raise W2SError("give at least one weak teacher: --weak a,b,c (MACPO's teachers)")
    if not names(cfg.strong) or len(names(cfg.strong)) != 1:
        raise W2SError(f"give exactly one strong student with --strong, got {cfg.strong!r}")
    strong = names(cfg.strong)[0]
    where = {}
    for name in [*weak, strong]:
        resolved = resolve_model(name)  # a malformed name fails here
        key = resolved.location  # an alias and its hub id are one model
        if key in where:
            what = "the strong student" if name == strong else "a weak teacher"
            raise W2SError(f"{name} is {what} and also {where[key]}; MACPO needs distinct models "
                           "(each one plays a positive and a negative agent)")
        where[key] = f"the weak teacher {name}"
    if cfg.iterations < 1:
        raise W2SError(f"iterations must be at least 1, got {cfg.iterations}")
    if cfg.filter_rule not in FILTER_RULES:
        raise W2SError(f"filter_rule must be one of {list(FILTER_RULES)}, got "
                       f"{cfg.filter_rule!r}{did_you_mean(cfg.filter_rule, FILTER_RULES)}")
    if cfg.filter_rule in ("lowest", "lowest-global") and cfg.filter_k < 1:
        raise W2SError(f"filter_k must be at least 1 (it keeps the k least perplexing "
                       f"candidates), got {cfg.filter_k}")
    if cfg.filter_rule == "threshold":
        if cfg.max_perplexity is None:
            raise W2SError("filter_rule threshold needs --max-perplexity (keep candidates whose "
                           "perplexity is at most this)")
        if cfg.max_perplexity <= 1.0:
            raise W2SError(f"max_perplexity {cfg.max_perplexity} keeps nothing: a perplexity is "
                           "at least 1; choose a larger one")
    elif cfg.max_perplexity is not None:
        raise W2SError(f"max_perplexity is set but filter_rule is {cfg.filter_rule}; it only "
                       "applies to filter_rule threshold")
    for key, least in (("n_train", 4), ("n_test", 1), ("lora_r", 1)):
        if getattr(cfg, key) < least:
            raise W2SError(f"{key} must be at least {least}, got {getattr(cfg, key)}")
    if cfg.max_len < 8:
        raise W2SError(f"max_len must be at least 8 tokens, got {cfg.max_len}")
    if cfg.beta <= 0:
        raise W2SError(f"beta must be > 0, got {cfg.beta}")
    if cfg.ftx < 0:
        raise W2SError(f"ftx (the SFT weight) must be >= 0, got {cfg.ftx}")
    if not cfg.strong_neg_epochs > 0:
        raise W2SError(f"strong_neg_epochs must be > 0, got {cfg.strong_neg_epochs}")
    if cfg.dpo_reference not in REFERENCES:
        raise W2SError(f"dpo_reference must be one of {list(REFERENCES)}, got "
                       f"{cfg.dpo_reference!r}")
    if cfg.quantize not in QUANTIZE:
        raise W2SError(f"quantize must be one of {list(QUANTIZE)}, got {cfg.quantize!r}")
    if cfg.sft.mixed_precision != cfg.dpo.mixed_precision:
        raise W2SError(f"sft.mixed_precision ({cfg.sft.mixed_precision}) and dpo.mixed_precision "
                       f"({cfg.dpo.mixed_precision}) differ; one process runs one precision, so "
                       "set both the same")
    train_config(cfg.sft, cfg.seed)  # bad optimizer, scheduler, sizes: one line here
    train_config(cfg.dpo, cfg.seed)
    sampling(cfg.generation).validate()
    from w2s.models.generate import BACKENDS

    if cfg.generation.backend not in BACKENDS:
        raise W2SError(f"unknown generation backend {cfg.generation.backend!r}"
                       f"{did_you_mean(cfg.generation.backend, BACKENDS)}; choose one of "
                       f"{list(BACKENDS)}")
    if not 0 < cfg.generation.vllm_memory <= 1:
        raise W2SError(f"generation.vllm_memory is a fraction of GPU memory in (0, 1], got "
                       f"{cfg.generation.vllm_memory}")
    if cfg.judge.strip().lower() != "none":
        parse_judge(cfg.judge)
    if cfg.gold_judge:
        parse_judge(cfg.gold_judge)
    teachers = [f"teacher{i}" for i in range(1, len(weak) + 1)]
    return {"weak": weak, "strong": strong, "teachers": teachers, "student": "student",
            "learners": [*teachers, "student"]}


def train_config(stage: SFTTrain, seed: int, **changes):
    """The loop's :class:`w2s.train.TrainConfig` for a stage (seed set, ``changes`` applied)."""
    return stage.train_config(seed=seed, **changes)


def sampling(gen: Generation, seed_offset: int = 0):
    """The :class:`w2s.models.generate.SamplingConfig` of the generation section."""
    from w2s.models.generate import SamplingConfig

    values = {f.name: getattr(gen, f.name) for f in dataclasses.fields(SamplingConfig)}
    values["seed"] = gen.seed + seed_offset
    return SamplingConfig(**values)
