"""The config of ``w2s search`` (torch-free): :class:`SearchConfig` and the parsing of its
chunk length and shard settings."""


from __future__ import annotations

from typing import Any

from w2s.config import config_class, derive, option, section
from w2s.errors import W2SError
from w2s.methods.sections import Judging, Runtime, Sampling, stage_train

DECODERS = ("cbs", "bon", "sample", "eft", "proxy", "genarm", "ed", "jailbreak")
LOGIT_DECODERS = ("eft", "proxy", "genarm", "ed", "jailbreak")
"""The presets of the logit-arithmetic engine (:mod:`w2s.methods.search.logits`)."""
SAFETY_DECODERS = ("ed", "jailbreak")
"""Attacks: a run with one of them reports every decoder's attack success rate too."""
HEADLINE_ORDER = ("cbs", "bon", "eft", "proxy", "genarm", "jailbreak", "ed", "sample")


SearchSampling = derive(Sampling, "SearchSampling", "How the base model samples (every "
                        "decoder): temperature 0.7, 50 new base-model tokens.",
                        module=__name__, temperature=0.7, max_new_tokens=50)

GenARMTrain = stage_train(
    "GenARMTrain", "How GenARM's autoregressive reward model is trained (the authors' full "
    "fine-tuning of the Tulu2-7B ARM: lr 5e-7, 3 epochs, batch 32, linear schedule, 10% warm-up, "
    "no weight decay).", module=__name__, lr=5e-7, epochs=3.0, batch_size=32,
    scheduler="linear", warmup_ratio=0.1)


@config_class
class SearchConfig:
    """``w2s search``: weak-to-strong search and its baselines, judged side by side.

    Inline sections (flags and recipe keys at the top level): ``sampling`` (temperature, top_k,
    top_p, max_new_tokens of the base model), ``judging`` (judge, judge_batch_size),
    ``runtime`` (device, dtype, seed, run_dir).
    """

    base: str = option("gpt2-large", "the frozen large model: alias, local dir, hub id, tiny:..., "
                       "or api:URL#MODEL (an OpenAI-compatible /v1/completions server)")
    tuned: str = option("", "the small TUNED guide (e.g. gpt2 after DPO): alias, local dir, hub "
                        "id or tiny:...; required")
    untuned: str = option("gpt2", "the small UNTUNED guide the tuned one started from; must share "
                          "its tokenizer")
    task: str = option("imdb-prompts", "prompts task (`w2s tasks`), local:PATH, or a "
                       "classification / preference task (its texts' opening words, its prompts)")
    split: str = option("test", "split the prompts come from")
    base_prompt: str = option("{prompt}", "what the BASE model reads of each prompt: a template "
                              "with {prompt}; the guides always read the raw prompt (the "
                              "authors' IMDB base reads 'Here is a movie review from imdb: "
                              "{prompt}')")
    n_prompts: int = option(200, "prompts decoded (a seeded sample of the split)", min=1)
    shard: str = option("", "decode only shard I of N of the prompts, as I/N (0-based, e.g. "
                        "0/8): one run per GPU, then `w2s eval winrate` over the joined "
                        "generation files; empty = all prompts")
    prefix_words: int = option(8, "classification tasks: words of each text used as the prompt",
                               min=1)
    decoder: list[str] = option(["cbs", "bon", "sample"], "decoders run side by side on the same "
                                "prompts; sample always runs (the win-rate baseline)",
                                choices=list(DECODERS))
    w: int = option(4, "CBS: beams kept after every chunk (W)", min=1,
                    message="CBS needs W >= 1 (--w)")
    k: int = option(4, "CBS: successors sampled from every kept beam (K)", min=1,
                    message="CBS needs K >= 1 (--k)")
    l: str = option("5", "CBS: chunk length in base-model tokens (L), a positive integer or "  # noqa: E741
                    "inf")
    bon_n: int | None = option(None, "best-of-N: samples per prompt; none = W*K, what CBS samples "
                               "per chunk", min=1, message="best-of-N needs N >= 1 (--bon-n)")
    eft_beta: float = option(1.0, "EFT: weight of log p_tuned - log p_untuned")
    proxy_alpha: float = option(1.0, "proxy-tuning: weight of log p_tuned - log p_untuned added "
                                "to the base (Liu et al.: 1; --tuned is the expert, --untuned "
                                "the anti-expert)")
    ed_aligned: str = option("", "emulated disalignment: the ALIGNED version of --base (e.g. "
                             "Llama-2-7b-chat for a Llama-2-7b base); required by --decoder ed")
    ed_alpha: float = option(0.3, "emulated disalignment: alpha in p_base^(1+alpha) / "
                             "p_aligned^alpha (Zhou et al.'s code: 0.3 for Llama-2, 0.6 "
                             "Llama/Vicuna and Mistral, 2.0 Alpaca/Beaver)", min=0)
    jailbreak_unsafe: str = option("", "weak-to-strong jailbreaking: the small UNSAFE model (the "
                                   "safe one fine-tuned on harmful examples); empty = --tuned")
    jailbreak_safe: str = option("", "weak-to-strong jailbreaking: the small SAFE model the "
                                 "unsafe one was tuned from; empty = --untuned")
    jailbreak_alpha: float = option(1.5, "weak-to-strong jailbreaking: weight of log p_unsafe - "
                                    "log p_safe added to the large safe --base (Zhao et al.'s "
                                    "code: 1.5)")
    genarm_model: str = option("", "GenARM: an autoregressive reward model already trained (a "
                               "folder or hub id, e.g. YuanchengXu/AutoregressiveRM-tulu2-7b): "
                               "used as it is, no training; empty = train one (a cached stage) "
                               "from --genarm-init on --genarm-task")
    genarm_init: str = option("", "GenARM: the model the reward model is trained from (the "
                              "authors: the 7B SFT model of the base's family, tulu-2-7b); "
                              "must share the base's vocabulary; empty = --untuned")
    genarm_task: str = option("", "GenARM: the preference task (`w2s tasks`, or local:PATH with "
                              "prompt/chosen/rejected) the reward model learns from (the "
                              "authors: HuggingFaceH4/ultrafeedback_binarized, or HH-RLHF); "
                              "required by --decoder genarm unless --genarm-model is given")
    genarm_split: str = option("train", "GenARM: split of --genarm-task trained on")
    genarm_n: int | None = option(None, "GenARM: preference pairs trained on (a seeded sample); "
                                  "none = the whole split", min=1)
    genarm_beta_r: float = option(0.05, "GenARM: beta_r of the reward r = beta_r log pi_r(y|x) "
                                  "in the Bradley-Terry loss (the authors: 0.05 for their "
                                  "HH-RLHF LLaMA ARM, 0.1 for the Tulu2 ARM)", above=0)
    genarm_alpha: float = option(1.0, "GenARM: weight alpha = 1/beta of log pi_r added to the "
                                 "base's log-probs (the authors: 1)", min=0)
    genarm_max_len: int = option(1024, "GenARM: tokens per training pair (prompt + response), "
                                 "the prompt cut first (the authors' HH script: 1024)", min=2)
    genarm_train: GenARMTrain = section(GenARMTrain, "the training of GenARM's reward model "
                                        "(genarm_train: {lr, epochs, max_steps, batch_size, ...})",
                                        prefixed=True)
    small_prompt: str = option("{prompt}", "logit decoders: what the models other than the base "
                               "read of each prompt, a template with {prompt} (the jailbreaking "
                               "authors' models all read 'Human: {prompt}Assistant: ')")
    sampling: Sampling = section(SearchSampling, "how the base model samples", inline=True)
    chat: bool = option(True, "wrap prompts in each model's chat template (when it has one); "
                        "--no-chat for plain-text continuation (IMDB, reviews)")
    eos_at_cut: bool = option(False, "score a candidate cut at max_new_tokens with EOS appended, "
                              "as if it ended there (the authors' code); off: scored as the "
                              "unfinished text it is")
    judging: Judging = section(Judging, "the gold judge", inline=True)
    judge_reads: str = option("response", "what a text judge (cls:, vader, reward:) scores: the "
                              "response, or prompt+response (the authors' IMDB gold reward "
                              "scores the whole review)", choices=["response", "prompt+response"])
    prompt_batch: int = option(8, "prompts searched together (rows = prompt_batch x W x K)",
                               min=1)
    score_batch_size: int = option(16, "responses per forward pass when scoring from scratch "
                                   "(best-of-N, guide scores of the other decoders)", min=1)
    runtime: Runtime = section(Runtime, "device, dtype, seed, run directory", inline=True)
    api_timeout: float = option(60.0, "api base: seconds per request", above=0)
    api_max_retries: int = option(3, "api base: retries per request (exponential backoff)",
                                  min=0)
    api_workers: int = option(4, "api base: parallel requests when a server returns fewer "
                              "completions than asked (many ignore n)", min=1)
    api_rate_limit: float | None = option(None, "api base: at most this many requests per "
                                          "second (none: no limit)", above=0)

    def check(self) -> None:
        """The rules across fields: ``l`` is a chunk length (:func:`parse_chunk`), ``shard``
        empty or I/N (:func:`parse_shard`), ``base_prompt`` holding ``{prompt}``."""
        parse_chunk(self.l)
        if "{prompt}" not in self.base_prompt:
            raise W2SError(f"--base-prompt {self.base_prompt!r} has no {{prompt}}; write where "
                           "the prompt goes, e.g. 'Here is a movie review from imdb: {prompt}'")
        if "{prompt}" not in self.small_prompt:
            raise W2SError(f"--small-prompt {self.small_prompt!r} has no {{prompt}}; write where "
                           "the prompt goes")
        if self.shard:
            parse_shard(self.shard)


PRESETS: dict[str, Any] = {
    "eft": lambda c: [("base", 1.0), ("tuned", c.eft_beta), ("untuned", -c.eft_beta)],
    "proxy": lambda c: [("base", 1.0), ("tuned", c.proxy_alpha), ("untuned", -c.proxy_alpha)],
    "ed": lambda c: [("base", 1.0 + c.ed_alpha), ("ed_aligned", -c.ed_alpha)],
    "jailbreak": lambda c: [("base", 1.0), ("jailbreak_unsafe", c.jailbreak_alpha),
                            ("jailbreak_safe", -c.jailbreak_alpha)],
    "genarm": lambda c: [("base", 1.0), ("arm", c.genarm_alpha)],
}
"""Each logit preset as (role, weight) terms; the first is the model whose tokens stop a row.
A new preset is one entry here and its roles in :func:`role_model`. GenARM's ``arm`` role is
the autoregressive reward model: ``--genarm-model``, or the one its training stage wrote
(:mod:`w2s.methods.search.genarm`)."""


def preset_weights(name: str, cfg: SearchConfig) -> list[tuple[str, float]]:
    """The (role, weight) terms of logit preset ``name`` under ``cfg``."""
    return PRESETS[name](cfg)


def role_model(cfg: SearchConfig, role: str, arm: str = "") -> str:
    """The model name that plays ``role`` in a preset: ``base``, ``tuned``, ``untuned``,
    ``ed_aligned``, ``jailbreak_unsafe`` (empty: ``tuned``), ``jailbreak_safe`` (empty:
    ``untuned``), ``arm`` (``arm``, the folder GenARM's training stage wrote, else
    ``--genarm-model``; empty before either exists)."""
    if role == "arm":
        return arm or cfg.genarm_model
    fallback = {"jailbreak_unsafe": cfg.tuned, "jailbreak_safe": cfg.untuned}
    return getattr(cfg, role) or fallback.get(role, "")


def genarm_init(cfg: SearchConfig) -> str:
    """The model GenARM's reward model is trained from: ``--genarm-init``, else ``--untuned``."""
    return cfg.genarm_init or cfg.untuned


def parse_chunk(value: Any) -> int | None:
    """``--l``: a positive integer, or ``inf`` (None: the whole response in one chunk)."""
    text = str(value).strip().lower()
    if text in ("inf", "infinity", "none"):
        return None
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is None or not number.is_integer() or number < 1:
        raise W2SError(f"L (--l) must be a positive integer or inf, got {value!r}")
    return int(number)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; anything else is a one-line error."""
    parts = str(text).split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        index, count = -1, 0
    if len(parts) != 2 or count < 1 or not 0 <= index < count:
        raise W2SError(f"--shard takes I/N with 0 <= I < N (e.g. 0/8), got {text!r}")
    return index, count
