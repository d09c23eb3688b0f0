"""The config of ``w2s search`` (torch-free): :class:`SearchConfig` and the parsing of its
chunk length and shard settings."""


from __future__ import annotations

from typing import Any

from w2s.config import config_class, derive, option, section
from w2s.errors import W2SError
from w2s.methods.sections import Judging, Runtime, Sampling

DECODERS = ("cbs", "bon", "sample", "eft")
HEADLINE_ORDER = ("cbs", "bon", "eft", "sample")


SearchSampling = derive(Sampling, "SearchSampling", "How the base model samples (every "
                        "decoder): temperature 0.7, 50 new base-model tokens.",
                        module=__name__, temperature=0.7, max_new_tokens=50)


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
        if self.shard:
            parse_shard(self.shard)


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
