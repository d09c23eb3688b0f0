"""Weak-to-strong search (Zhou et al. 2024, arXiv 2405.19262): steer a frozen large model at
decoding time with a small tuned / untuned pair, no training of the large model.

The small pair defines a score on (partial) responses,

    V(x, y) = log pi_tuned(y | x) - log pi_untuned(y | x),

how much more likely tuning made the text (for a DPO'd model, its implicit reward up to a
constant). Chunk-level beam search CBS(W, K, L) samples W*K candidates from the LARGE model,
extends every one by L tokens, keeps the W with the highest V, gives each K successors, and so on
until the kept beams finish; the answer is the best candidate. Best-of-N is CBS(1, N, inf), plain
sampling CBS(1, 1, inf); emulated fine-tuning (EFT) is the token-level baseline,
``log p_base + beta (log p_tuned - log p_untuned)``. V is computed on TEXT (the large model's
text re-encoded with the guides' tokenizer and chat template), so the large model may have another
vocabulary, or be a black box behind a completions API. One run decodes the same prompts with
every ``--decoder`` (sampling always: it is the baseline of every win rate), then judges them
through the evaluation layer: the gold reward of each decoder's answers and its win rate against
plain sampling, beside what each decoder spent (base tokens sampled, guide tokens scored, time).

One GPU, or the CPU::

    w2s search --base gpt2-large --tuned PATH_OR_ALIAS --untuned gpt2 --task imdb-prompts \\
        --w 4 --k 4 --l 5 --decoder cbs,bon,sample --judge cls:lvwerra/distilbert-imdb:POSITIVE
    w2s search --recipe recipes/search/tiny.yaml --run-dir runs/search-tiny
    w2s search --recipe recipes/search/alpacaeval-llama3.yaml --base api:http://HOST:8000/v1#MODEL

Several GPUs: decoding is not split across processes; give each GPU its own share of the prompts
(``--n-prompts``/``--seed``, or ``local:`` prompt files) and one run each, then ``w2s report``.

Output (the run directory): ``generations-<decoder>.jsonl`` (answer, guide score V and its
log-probs, the score trace of the chosen beam, gold reward), ``traces-<decoder>.jsonl`` (every
candidate scored, round by round: parent beam, chunk, score, selected), ``judgments-<decoder>.jsonl``
(win rate against sampling), ``metrics.json`` (``win_rate``: CBS vs sampling, ``gold_reward_mean``
of CBS, and per decoder its gold reward, guide score, win rate and compute).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

from w2s.config import option
from w2s.errors import W2SError

DECODERS = ("cbs", "bon", "sample", "eft")
HEADLINE_ORDER = ("cbs", "bon", "eft", "sample")


@dataclass
class SearchConfig:
    """``w2s search``: weak-to-strong search and its baselines, judged side by side."""

    base: str = option("gpt2-large", "the frozen large model: alias, local dir, hub id, tiny:..., "
                       "or api:URL#MODEL (an OpenAI-compatible /v1/completions server)")
    tuned: str = option("", "the small TUNED guide (e.g. gpt2 after DPO): alias, local dir, hub "
                        "id or tiny:...; required")
    untuned: str = option("gpt2", "the small UNTUNED guide the tuned one started from; must share "
                          "its tokenizer")
    task: str = option("imdb-prompts", "prompts task (`w2s tasks`), local:PATH, or a "
                       "classification / preference task (its texts' opening words, its prompts)")
    split: str = option("test", "split the prompts come from")
    n_prompts: int = option(200, "prompts decoded (a seeded sample of the split)")
    shard: str = option("", "decode only shard I of N of the prompts, as I/N (0-based, e.g. "
                        "0/8): one run per GPU, then `w2s eval winrate` over the joined "
                        "generation files; empty = all prompts")
    prefix_words: int = option(8, "classification tasks: words of each text used as the prompt")
    decoder: list[str] = option(["cbs", "bon", "sample"], "decoders run side by side on the same "
                                "prompts; sample always runs (the win-rate baseline)",
                                choices=list(DECODERS))
    w: int = option(4, "CBS: beams kept after every chunk (W)")
    k: int = option(4, "CBS: successors sampled from every kept beam (K)")
    l: str = option("5", "CBS: chunk length in base-model tokens (L), a positive integer or "  # noqa: E741
                    "inf")
    bon_n: int | None = option(None, "best-of-N: samples per prompt; none = W*K, what CBS samples "
                               "per chunk")
    eft_beta: float = option(1.0, "EFT: weight of log p_tuned - log p_untuned")
    temperature: float = option(0.7, "base-model sampling temperature (0 = greedy)")
    top_k: int = option(0, "keep the k most likely tokens; 0 = off (never taken from the model's "
                        "generation_config)")
    top_p: float = option(1.0, "nucleus sampling mass; 1.0 = off")
    max_new_tokens: int = option(50, "tokens per response (base-model tokens)")
    chat: bool = option(True, "wrap prompts in each model's chat template (when it has one); "
                        "--no-chat for plain-text continuation (IMDB, reviews)")
    judge: str = option("vader", "gold judge: vader | reward:NAME | rm:MODEL | cls:MODEL:LABEL | "
                        "llm:MODEL | api:URL[#MODEL]")
    prompt_batch: int = option(8, "prompts searched together (rows = prompt_batch x W x K)")
    score_batch_size: int = option(16, "responses per forward pass when scoring from scratch "
                                   "(best-of-N, guide scores of the other decoders)")
    judge_batch_size: int = option(16, "responses per forward pass of a model judge")
    seed: int = option(0, "seed of the prompt sample and of sampling (every decoder starts "
                       "from it)")
    device: str = option("auto", "auto, cpu, cuda or mps")
    dtype: str = option("auto", "auto (bf16 on CUDA, fp32 elsewhere), bf16, fp16 or fp32")
    api_timeout: float = option(60.0, "api base: seconds per request")
    api_max_retries: int = option(3, "api base: retries per request (exponential backoff)")
    run_dir: str | None = option(None, "run directory (default runs/search/<time>-<hash>)")


# --------------------------------------------------------------------------------------------
# the experiment


CONFIG = SearchConfig
"""The config class of this method (what ``w2s lab`` and the CLI build from a recipe)."""


def run(cfg: SearchConfig) -> dict:
    """Decode the prompts with every decoder, judge them, write the run; returns metrics.json."""
    import w2s.tiny  # noqa: F401  (registers the builder of tiny:...+<stage> model names)
    from w2s.runs import Run
    from w2s.seeding import seed_everything

    plan = plan_search(cfg)  # bad input fails here, before any directory exists
    env = {"prompts": plan["fingerprint"], "n_prompts": len(plan["prompts"]),
           "decoders": plan["decoders"], "chunk": plan["l"], "sampling": plan["sampling"],
           "base": plan["base_identity"], "judge": plan["judge"].identity(), "seed": cfg.seed}
    with Run.start("search", cfg, run_dir=cfg.run_dir, env_extra=env) as run:
        for note in plan["notes"]:
            run.log({"event": "note", "note": note})
        seed_everything(cfg.seed)
        models = load_models(cfg, plan)
        outputs = {}
        for name in plan["decoders"]:
            outputs[name] = decode(name, cfg, plan, models)
            run.log({"stage": "decode", "decoder": name, **outputs[name]["compute"]})
        # a judge that fails now (a server down) is not bad input: keep the answers
        run.keep("the decoded answers (generations-*.jsonl; judge them with "
                 "`w2s eval winrate`)")
        metrics = judge_outputs(cfg, plan, models, outputs, run)
        _print_summary(metrics)
        return run.finish(metrics)


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


def plan_search(cfg: SearchConfig) -> dict:
    """Validate everything the user can get wrong, before any run directory or model exists.

    One-line :class:`W2SError` for: W, K or L below 1, bad sampling settings, no tuned guide, a
    tuned and an untuned guide with different tokenizers, an empty prompt set, an unknown judge,
    an API base that cannot be reached, EFT with an API base or with vocabularies that differ.
    """
    from w2s.evaluation.judges import build_judge, parse_judge
    from w2s.models import load_tokenizer
    from w2s.models.generate import SamplingConfig
    from w2s.search.guide import same_tokenizer

    if cfg.w < 1 or cfg.k < 1:
        raise W2SError(f"CBS needs W >= 1 and K >= 1 (--w, --k), got W={cfg.w}, K={cfg.k}")
    chunk = parse_chunk(cfg.l)
    if cfg.bon_n is not None and cfg.bon_n < 1:
        raise W2SError(f"best-of-N needs N >= 1 (--bon-n), got {cfg.bon_n}")
    if cfg.prompt_batch < 1:
        raise W2SError(f"--prompt-batch must be at least 1, got {cfg.prompt_batch}")
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_k=cfg.top_k, top_p=cfg.top_p, batch_size=cfg.prompt_batch,
                              seed=cfg.seed).validate()
    for key in ("n_prompts", "prefix_words", "score_batch_size", "judge_batch_size"):
        if getattr(cfg, key) < 1:
            raise W2SError(f"--{key.replace('_', '-')} must be at least 1, got "
                           f"{getattr(cfg, key)}")
    decoders = list(dict.fromkeys(cfg.decoder))
    if not decoders:
        raise W2SError(f"give at least one --decoder ({', '.join(DECODERS)})")
    decoders = ["sample"] + [d for d in decoders if d != "sample"]
    if not cfg.tuned.strip():
        raise W2SError("give the tuned guide: --tuned PATH_OR_ALIAS (e.g. a DPO'd gpt2), and "
                       "--untuned the model it was tuned from")
    parse_judge(cfg.judge)
    notes: list[str] = []
    if "sample" not in cfg.decoder:
        notes.append("decoder 'sample' added: it is the baseline of every win rate")

    prompts, fingerprint, caught = load_prompts(cfg)
    notes += caught

    tuned_tok, untuned_tok = load_tokenizer(cfg.tuned), load_tokenizer(cfg.untuned)
    if not same_tokenizer(tuned_tok, untuned_tok):
        raise W2SError(f"the tuned guide {cfg.tuned} and the untuned guide {cfg.untuned} have "
                       "different tokenizers; V = log pi_tuned - log pi_untuned compares two "
                       "versions of ONE model: pass the model the tuned one was tuned from")
    api = None
    if cfg.base.startswith("api:"):
        from w2s.search.base import ApiBase

        if "eft" in decoders:
            raise W2SError("decoder eft mixes the base model's token log-probs with the guides'; "
                           "an api: base gives none: drop eft or use a local base model")
        api = ApiBase(cfg.base, timeout=cfg.api_timeout, max_retries=cfg.api_max_retries)
        model = api.check()
        identity = {"kind": "api", "url": api.url, "model": model}
    else:
        base_tok = load_tokenizer(cfg.base)
        if "eft" in decoders and not same_tokenizer(base_tok, tuned_tok):
            raise W2SError(f"decoder eft adds the guides' token log-probs to the base model's, "
                           f"so it needs one vocabulary, but {cfg.base} and {cfg.tuned} have "
                           "different tokenizers; drop eft (cbs and bon work across "
                           "tokenizers)")
        identity = {"kind": "local", "model": cfg.base}
    judge = build_judge(cfg.judge, batch_size=cfg.judge_batch_size, device=cfg.device,
                        dtype=cfg.dtype)  # a judge model that cannot load fails here too
    return {"judge": judge, "decoders": decoders, "l": chunk, "sampling": _sampling_record(sampling),
            "bon_n": cfg.bon_n or cfg.w * cfg.k, "prompts": prompts, "fingerprint": fingerprint,
            "api": api, "base_identity": identity, "notes": notes}


def _sampling_record(sampling) -> dict:
    from w2s.models.generate import sampling_record

    record = sampling_record(sampling, "w2s.search")
    record.pop("batch_size", None)
    return record


def load_prompts(cfg: SearchConfig) -> tuple[list[dict], str, list[str]]:
    """``(rows {id, prompt, ...}, fingerprint, warnings)`` of the prompts to decode."""
    from w2s.data import as_prompts, load_task

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_task(cfg.task, split=cfg.split, n=cfg.n_prompts, seed=cfg.seed)
    if data.kind != "prompts":
        data = as_prompts(data, prefix_words=cfg.prefix_words)
    if not data.rows:
        raise W2SError(f"task '{cfg.task}' split '{cfg.split}' gives no prompts; pick another "
                       "split or task (`w2s tasks`)")
    rows, fingerprint = data.rows, data.fingerprint()
    if cfg.shard:
        index, count = parse_shard(cfg.shard)
        rows = rows[index::count]
        if not rows:
            raise W2SError(f"shard {cfg.shard} of {len(data.rows)} prompts is empty; use fewer "
                           "shards")
        fingerprint = f"{fingerprint}-shard{index}of{count}"
    notes = [str(w.message) for w in caught]
    for message in notes:
        warnings.warn(message, stacklevel=3)
    return rows, fingerprint, notes


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


# --------------------------------------------------------------------------------------------
# models and decoding


def load_models(cfg: SearchConfig, plan: dict) -> dict:
    """The base model (local or API), the guide, and the base causal LM for EFT."""
    from w2s.models import load_causal_lm
    from w2s.search import Guide, HFBase

    tuned, tokenizer = load_causal_lm(cfg.tuned, dtype=cfg.dtype, device=cfg.device)
    untuned, _ = load_causal_lm(cfg.untuned, dtype=cfg.dtype, device=cfg.device)
    models = {"guide": Guide(tuned, untuned, tokenizer, chat=cfg.chat)}
    if plan["api"] is not None:
        models["base"] = plan["api"]
    else:
        model, base_tok = load_causal_lm(cfg.base, dtype=cfg.dtype, device=cfg.device)
        models["base"] = HFBase(model, base_tok, chat=cfg.chat)
        models["base_model"], models["base_tokenizer"] = model, base_tok
    return models


def decode(name: str, cfg: SearchConfig, plan: dict, models: dict) -> dict:
    """One decoder over every prompt (``prompt_batch`` at a time), from the run's seed.

    Returns ``{"results", "traces", "compute"}``; results and traces are per prompt.
    """
    import torch

    from w2s.search import Compute, Sampling, best_of_n, cbs, eft, plain_sample

    base, guide = models["base"], models["guide"]
    sampling = Sampling(cfg.temperature, cfg.top_k, cfg.top_p)
    device = getattr(base, "device", torch.device("cpu"))
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    compute = Compute()
    prompts = [r["prompt"] for r in plan["prompts"]]
    results: list[dict] = []
    traces: list = []
    t0 = time.perf_counter()
    for start in range(0, len(prompts), cfg.prompt_batch):
        batch = prompts[start:start + cfg.prompt_batch]
        if name == "cbs":
            out = cbs(base, guide, batch, w=cfg.w, k=cfg.k, l=plan["l"],
                      max_new_tokens=cfg.max_new_tokens, sampling=sampling, generator=generator,
                      compute=compute)
        elif name == "bon":
            out = best_of_n(base, guide, batch, n=plan["bon_n"], max_new_tokens=cfg.max_new_tokens,
                            sampling=sampling, generator=generator, compute=compute,
                            batch_size=cfg.score_batch_size)
        elif name == "sample":
            out = plain_sample(base, batch, max_new_tokens=cfg.max_new_tokens, sampling=sampling,
                               generator=generator, compute=compute)
        else:
            out = eft(models["base_model"], models["base_tokenizer"], guide, batch,
                      beta=cfg.eft_beta, max_new_tokens=cfg.max_new_tokens, sampling=sampling,
                      generator=generator, chat=cfg.chat, compute=compute)
        results.extend(out[0])
        traces.extend(out[1])
    compute.wall_s = time.perf_counter() - t0
    settings = {"cbs": {"w": cfg.w, "k": cfg.k, "l": plan["l"] or "inf"},
                "bon": {"n": plan["bon_n"]}, "sample": {}, "eft": {"beta": cfg.eft_beta}}[name]
    return {"results": results, "traces": traces, "compute": compute.as_dict(),
            "settings": settings}


# --------------------------------------------------------------------------------------------
# judging


class _JudgmentsAs:
    """The run as :func:`~w2s.evaluation.evaluate_winrate` sees it, with its judgments.jsonl
    written under another name (one file per decoder)."""

    def __init__(self, run, name: str, decoder: str):
        self.run, self.name, self.decoder = run, name, decoder

    def write_rows(self, name: str, rows):
        return self.run.write_rows(self.name if name == "judgments.jsonl" else name, rows)

    def log(self, record: dict) -> None:
        self.run.log({**record, "decoder": self.decoder})


def judge_outputs(cfg: SearchConfig, plan: dict, models: dict, outputs: dict, run) -> dict:
    """Guide score V of every answer (from scratch where the decoder kept none), the gold
    reward of every answer and the win rate of every decoder against sampling, through the
    evaluation layer; writes the generations and traces files; returns the metrics."""
    from statistics import mean

    from w2s.evaluation import evaluate_winrate

    judge = plan["judge"]
    prompts = [r["prompt"] for r in plan["prompts"]]
    rows: dict[str, list[dict]] = {}
    for name, out in outputs.items():
        results = out["results"]
        missing = [i for i, r in enumerate(results) if r["score"] is None]
        if missing:  # sampling and EFT keep no guide score: read their answers once
            s = models["guide"].score_texts([prompts[i] for i in missing],
                                            [results[i]["response"] for i in missing],
                                            [results[i]["finished"] for i in missing],
                                            batch_size=cfg.score_batch_size)
            for j, i in enumerate(missing):
                results[i].update(score=s["score"][j], logp_tuned=s["tuned"][j],
                                  logp_untuned=s["untuned"][j])
        rows[name] = []
        for src, res in zip(plan["prompts"], results, strict=True):
            row = {"id": src["id"], "prompt": src["prompt"], "response": res["response"],
                   "decoder": name, "guide_score": res["score"], "logp_tuned": res["logp_tuned"],
                   "logp_untuned": res["logp_untuned"], "finished": res["finished"],
                   "tokens": res["tokens"], "score_trace": res["score_trace"], "beam": res["beam"]}
            if "label" in src:
                row["label"] = src["label"]
            rows[name].append(row)
        # written before any judge runs: a judge that fails leaves every decoder's answers
        _write_generations(run, name, rows[name])
        run.write_rows(f"traces-{name}.jsonl",
                       [{"id": src["id"], "rounds": t} for src, t in
                        zip(plan["prompts"], out["traces"], strict=True)])
    if judge.kind == "reward":
        for name in outputs:
            gold = judge.score([r["prompt"] for r in rows[name]],
                               [r["response"] for r in rows[name]])
            for row, g in zip(rows[name], gold, strict=True):
                row["gold_reward"] = g
            _write_generations(run, name, rows[name])

    per_decoder: dict[str, dict] = {}
    for name, out in outputs.items():
        figures: dict[str, Any] = {
            "settings": out["settings"],
            "gold_reward_mean": (mean(r["gold_reward"] for r in rows[name])
                                 if judge.kind == "reward" else None),
            "guide_score_mean": mean(r["guide_score"] for r in rows[name]),
            "finished_frac": mean(float(r["finished"]) for r in rows[name]),
            "tokens_mean": mean(r["tokens"] for r in rows[name]),
            "win_rate_vs_sample": None, "win_rate_se": None,
            "compute": out["compute"]}
        if name != "sample":
            wr = evaluate_winrate(rows[name], rows["sample"], judge,
                                  run=_JudgmentsAs(run, f"judgments-{name}.jsonl", name))
            figures.update(win_rate_vs_sample=wr["win_rate"], win_rate_se=wr["win_rate_se"],
                           wins=wr["wins"], ties=wr["ties"], losses=wr["losses"],
                           lc_win_rate=wr["lc_win_rate"])
        per_decoder[name] = figures

    head = next(d for d in HEADLINE_ORDER if d in outputs)
    top = per_decoder[head]
    metrics: dict[str, Any] = {
        "task": cfg.task, "n_prompts": len(prompts), "headline_decoder": head,
        "win_rate": top["win_rate_vs_sample"], "win_rate_se": top["win_rate_se"],
        "gold_reward_mean": top["gold_reward_mean"],
        "candidate_reward_mean": top["gold_reward_mean"] if head != "sample" else None,
        "baseline_reward_mean": per_decoder["sample"]["gold_reward_mean"],
        "guide_score_mean": top["guide_score_mean"],
    }
    for name, figures in per_decoder.items():
        metrics[f"gold_reward_{name}"] = figures["gold_reward_mean"]
        if name != "sample":
            metrics[f"win_rate_{name}"] = figures["win_rate_vs_sample"]
    metrics.update(decoders=per_decoder, sampling=plan["sampling"], judge=judge.identity(),
                   base=plan["base_identity"], tuned=cfg.tuned, untuned=cfg.untuned)
    return metrics


def _write_generations(run, name: str, rows: list[dict]) -> None:
    from w2s.evaluation import write_generations

    if run.main:
        write_generations(run.path / f"generations-{name}.jsonl", rows,
                          generator=f"w2s-search-{name}")


def _print_summary(metrics: dict) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    def cell(v: Any) -> str:
        return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    table = Table(title=f"w2s search: {metrics['task']}, {metrics['n_prompts']} prompts")
    for col in ("decoder", "gold reward", "guide score V", "win rate vs sample", "base tokens",
                "guide tokens", "wall s"):
        table.add_column(col)
    for name, f in metrics["decoders"].items():
        c = f["compute"]
        table.add_row(name, cell(f["gold_reward_mean"]), cell(f["guide_score_mean"]),
                      cell(f["win_rate_vs_sample"]), cell(c["base_tokens"]),
                      cell(c["guide_tokens_scored"]), cell(c["wall_s"]))
    Console(width=None if sys.stdout.isatty() else 160).print(table)
