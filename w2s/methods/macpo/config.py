"""The config of ``w2s macpo`` (torch-free): :class:`MACPOConfig` and its validation."""


from __future__ import annotations

from dataclasses import dataclass

from w2s.config import comma_list, config_class, derive, option, section, validate
from w2s.errors import W2SError
from w2s.methods.sections import Judging, Lora, Runtime, Sampling, stage_train

FILTER_RULES = ("lowest", "lowest-global", "threshold", "none")
"""How the perplexity filter picks the chosen answers among a learner's candidates (see
:func:`w2s.methods.macpo.pairing.perplexity_filter`)."""
REFERENCES = ("previous", "base")
STUDENT_SFT_ANSWERS = ("all", "random", "lowest_perplexity")
"""Which weak teachers' answers to a Q_w2s prompt the strong agents' initial SFT learns from (see
:func:`w2s.methods.macpo.pairing.pick_sft_answers`)."""
PROMPT_FORMATS = ("chat_template", "vicuna")
"""How every agent reads a prompt (see :class:`w2s.methods.macpo.agents.Format`)."""
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


BACKENDS = ("hf", "vllm")  # w2s.models.generate's, kept torch-free here (a test compares them)


@dataclass
class Generation(derive(Sampling, "_MACPOSampling", module=__name__, max_new_tokens=512,
                        temperature=0.95, top_p=0.7)):
    """How every agent samples its answers (the authors' generation settings): the shared
    :class:`w2s.config.Sampling` fields, the batch, the seed and the backend."""

    batch_size: int = option(16, "prompts per generate call", min=1)
    seed: int = option(0, "sampling seed (iteration t samples Q_w2s answers with seed + t)",
                       min=0)
    backend: str = option("hf", "hf (transformers, batched, KV cache) or vllm (pip install "
                          "'w2s[vllm]', a GPU, models from a hub id or folder, no --quantize): "
                          "one LoRA engine per base model, every agent an adapter on it; falls "
                          "back to hf with a warning", choices=list(BACKENDS))
    vllm_memory: float = option(0.4, "vllm: the GPU memory fraction its engines may take (the "
                                "model being trained shares the GPU)", above=0, max=1,
                                message="generation.vllm_memory is a fraction of GPU memory in "
                                        "(0, 1]")


MACPOJudging = derive(Judging, "MACPOJudging", "The win-rate judge.", module=__name__,
                      judge="rm:OpenAssistant/reward-model-deberta-v3-large-v2",
                      help={"judge": "win-rate judge (vader, reward:NAME, rm:MODEL, "
                                     "cls:MODEL:LABEL, llm:MODEL, api:URL#MODEL) or none (test "
                                     "answers are still written for `w2s eval winrate`)"})


@config_class
class MACPOConfig:
    """``w2s macpo``: weak teachers and a strong student align each other (Lyu et al. 2025).

    Inline sections (flags and recipe keys at the top level): ``lora`` (lora_r, lora_alpha,
    lora_targets), ``judging`` (judge), ``runtime`` (dtype, seed, run_dir; the device is the
    launcher's). ``generation`` is a nested section (``generation:`` in the recipe).
    """

    weak: str = option("meta-llama/Llama-2-7b-hf,mistral-7b,llama-3-8b",
                       "the K weak teachers, a comma list (alias, local dir, hub id or tiny:...); "
                       "each becomes a positive and a negative LoRA agent over one copy of it")
    strong: str = option("meta-llama/Llama-2-70b-hf", "the strong student (one model)")
    task: str = option("hh-helpful", "preference task (`w2s tasks`): train rows give the labeled "
                       "half and the unlabeled prompts Q_w2s, test prompts the evaluation")
    iterations: int = option(3, "MACPO iterations T (generate, filter, pair, train, evaluate)",
                             min=1)
    n_train: int = option(10000, "training rows, split by prompt into the labeled half (the "
                          "weak teachers' SFT data) and the unlabeled half (Q_w2s, prompts only)",
                          min=4)
    n_test: int = option(2000, "test rows; their distinct prompts are answered and judged", min=1)
    filter_rule: str = option("lowest", "perplexity filter under the learner's positive agent: "
                              "lowest = per prompt the k least perplexing candidates; "
                              "lowest-global = the k least perplexing of all; threshold = those "
                              "with perplexity <= max_perplexity; none = every candidate",
                              choices=list(FILTER_RULES))
    filter_k: int = option(1, "lowest / lowest-global: how many candidates to keep", min=1,
                           message="filter_k must be at least 1 (it keeps the k least "
                                   "perplexing candidates)")
    max_perplexity: float | None = option(None, "threshold: keep candidates with perplexity <= "
                                          "this (perplexities are >= 1)", above=1,
                                          message="--max-perplexity keeps nothing at or below 1 "
                                                  "(a perplexity is at least 1); choose a "
                                                  "larger one")
    skip_empty: bool = option(False, "when the filter leaves a learner no pairs, skip its "
                              "training in that iteration with a warning instead of stopping")
    beta: float = option(0.1, "DPO beta", above=0)
    ftx: float = option(0.2, "weight of the SFT term on the chosen answer added to DPO", min=0)
    dpo_reference: str = option("previous", "DPO's reference model: previous = the learner's "
                                "adapter as it was before this iteration; base = adapters "
                                "disabled (what a LoRA DPO run without a reference model uses)",
                                choices=list(REFERENCES))
    student_sft_answers: str = option("all", "the strong agents' initial SFT data, per Q_w2s "
                                      "prompt: all = every weak teacher's non-empty answer (K "
                                      "rows a prompt); random = one of them, drawn per prompt "
                                      "from the run's seed; lowest_perplexity = the one least "
                                      "perplexing under the student before its SFT (the "
                                      "authors' data hold about one answer a prompt)",
                                      choices=list(STUDENT_SFT_ANSWERS))
    prompt_format: str = option("chat_template", "how every agent reads a prompt: "
                                "chat_template = its tokenizer's chat template where it has one "
                                "(else the task's HH transcript, or USER: ... ASSISTANT:); vicuna "
                                "= LLaMA-Factory's vicuna template for every model, its system "
                                "line and an HH transcript flattened turn by turn (the authors' "
                                "scripts)", choices=list(PROMPT_FORMATS))
    strong_neg_epochs: float = option(1.0, "epochs of the strong negative agent's SFT on the weak "
                                      "negative agents' answers, continued from the strong "
                                      "positive agent (the authors' script: 1)", above=0)
    lora: Lora = section(Lora, "the agents' LoRA adapters", inline=True)
    max_len: int = option(1024, "tokens of prompt + response in training and scoring (the "
                          "prompt is cut from the left first)", min=8)
    judging: Judging = section(MACPOJudging, "the win-rate judge", inline=True,
                               drop=("judge_batch_size",))
    gold_judge: str = option("", "reward judge whose mean score is the gold reward; empty = the "
                             "judge itself when it is a reward")
    eval_teachers: bool = option(True, "also judge every teacher's answers against the baseline")
    quantize: str = option("none", "load every base model in 4bit or 8bit (bitsandbytes, CUDA): "
                           "QLoRA agents", choices=list(QUANTIZE))
    runtime: Runtime = section(Runtime, "dtype, seed, run directory", inline=True,
                               drop=("device",))
    sft: SFTTrain = section(SFTTrain, "initialisation of the agents by SFT")
    dpo: DPOTrain = section(DPOTrain, "the learners' DPO + SFT training in each iteration")
    generation: Generation = section(Generation, "how the agents sample answers")

    def check(self) -> None:
        """The rules across fields (:func:`w2s.config.validate` runs it after the bounds)."""
        if self.filter_rule == "threshold" and self.max_perplexity is None:
            raise W2SError("filter_rule threshold needs --max-perplexity (keep candidates whose "
                           "perplexity is at most this)")
        if self.filter_rule != "threshold" and self.max_perplexity is not None:
            raise W2SError(f"max_perplexity is set but filter_rule is {self.filter_rule}; it "
                           "only applies to filter_rule threshold")
        if self.sft.mixed_precision != self.dpo.mixed_precision:
            raise W2SError(f"sft.mixed_precision ({self.sft.mixed_precision}) and "
                           f"dpo.mixed_precision ({self.dpo.mixed_precision}) differ; one process "
                           "runs one precision, so set both the same")


def check_config(cfg: MACPOConfig) -> dict:
    """Validate every setting; return the plan (teacher models, learner names).

    Raises a one-line :class:`W2SError` for: what :func:`w2s.config.validate` refuses (zero
    iterations, filter settings that can keep nothing, bad numbers and choices, DPO and SFT
    stages with different precisions), no teachers, a teacher listed twice or equal to the
    student, bad training or sampling settings, an unparsable judge.
    """
    from w2s.evaluation.judges import parse_judge
    from w2s.models import resolve_model

    validate(cfg)  # types, choices, bounds (iterations >= 1, beta > 0, ...), check()
    weak = comma_list(cfg.weak)
    if not weak:
        raise W2SError("give at least one weak teacher: --weak a,b,c (MACPO's teachers)")
    if not comma_list(cfg.strong) or len(comma_list(cfg.strong)) != 1:
        raise W2SError(f"give exactly one strong student with --strong, got {cfg.strong!r}")
    strong = comma_list(cfg.strong)[0]
    where = {}
    for name in [*weak, strong]:
        resolved = resolve_model(name)  # a malformed name fails here
        key = resolved.location  # an alias and its hub id are one model
        if key in where:
            what = "the strong student" if name == strong else "a weak teacher"
            raise W2SError(f"{name} is {what} and also {where[key]}; MACPO needs distinct models "
                           "(each one plays a positive and a negative agent)")
        where[key] = f"the weak teacher {name}"
    train_config(cfg.sft, cfg.seed)  # bad optimizer, scheduler, sizes: one line here
    train_config(cfg.dpo, cfg.seed)
    sampling(cfg.generation)
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
    """The :class:`w2s.models.generate.SamplingConfig` of the generation section (validated),
    its seed moved on by ``seed_offset``."""
    return gen.sampling_config(seed=gen.seed + seed_offset)
