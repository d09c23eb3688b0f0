"""``w2s search``'s experiment: plan (every check before any run directory exists), load the
models, decode with every decoder, judge, write the run.

:func:`run` reads like the paper's evaluation: the same prompts through CBS, best-of-N, EFT and
plain sampling from one seed, then each decoder's gold reward and win rate against sampling,
with what it spent. The decoding parts are the package's other modules (:mod:`.cache`,
:mod:`.text`, :mod:`.guide`, :mod:`.base`, :mod:`.decoders`).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from w2s import compute as accounting
from w2s.errors import W2SError
from w2s.methods.search import SPEC
from w2s.methods.search.config import (
    DECODERS,
    HEADLINE_ORDER,
    LOGIT_DECODERS,
    SAFETY_DECODERS,
    SearchConfig,
    genarm_init,
    parse_chunk,
    parse_shard,
    preset_weights,
    role_model,
)


def run(cfg: SearchConfig) -> dict:
    """Decode the prompts with every decoder, judge them, write the run; returns metrics.json."""
    import w2s.tiny  # noqa: F401  (registers the builder of tiny:...+<stage> model names)
    from w2s.runs import Run
    from w2s.seeding import seed_everything

    plan = plan_search(cfg)  # bad input fails here, before any directory exists
    env = {"prompts": plan["fingerprint"], "n_prompts": len(plan["prompts"]),
           "decoders": plan["decoders"], "chunk": plan["l"], "sampling": plan["sampling"],
           "base": plan["base_identity"], "judge": plan["judge"].identity(), "seed": cfg.seed}
    with Run.start(SPEC.name, cfg, headline=SPEC.headline, run_dir=cfg.run_dir, env_extra=env) as run:
        for note in plan["notes"]:
            run.log({"event": "note", "note": note})
        seed_everything(cfg.seed)
        if "genarm" in plan:   # GenARM's reward model: a cached stage (trained on a miss)
            from w2s.methods.search.genarm import arm_model

            records: list[dict] = []

            def log(record: dict) -> None:
                run.log(record)
                if "cached" in record:
                    records.append(record)

            plan["arm"] = arm_model(cfg, plan["genarm"], log=log)
            plan["genarm_record"] = records[-1] if records else None
        models = load_models(cfg, plan)
        outputs = {}
        for name in plan["decoders"]:
            with accounting.stage(f"decode_{name}"):  # the run's compute record, per decoder
                outputs[name] = decode(name, cfg, plan, models)
                accounting.count(generated=outputs[name]["compute"]["base_tokens"])
            run.log({"stage": "decode", "decoder": name, **outputs[name]["compute"]})
        # a judge that fails now (a server down) is not bad input: keep the answers
        run.keep("the decoded answers (generations-*.jsonl; judge them with "
                 "`w2s eval winrate`)")
        metrics = judge_outputs(cfg, plan, models, outputs, run)
        _print_summary(metrics)
        return run.finish(metrics)


def plan_search(cfg: SearchConfig) -> dict:
    """Validate everything the user can get wrong, before any run directory or model exists.

    One-line :class:`W2SError` for: W, K or L below 1, bad sampling settings, no tuned guide, a
    tuned and an untuned guide with different tokenizers, an empty prompt set, an unknown judge,
    an API base that cannot be reached, a logit decoder (eft, proxy, genarm, ed, jailbreak) with
    an API base, without the models it needs, or with vocabularies that differ; genarm without a
    preference task (:func:`~w2s.methods.search.genarm.plan_arm`).
    """
    from w2s.config import validate
    from w2s.evaluation.judges import build_judge, parse_judge
    from w2s.methods.search.guide import same_tokenizer
    from w2s.models import load_tokenizer

    validate(cfg)  # types, choices, bounds (W, K, N, batch sizes, sampling), the chunk length
    chunk = parse_chunk(cfg.l)
    sampling = cfg.sampling.sampling_config(batch_size=cfg.prompt_batch, seed=cfg.seed)
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
        from w2s.methods.search.base import ApiBase

        logit = [d for d in decoders if d in LOGIT_DECODERS]
        if logit:
            raise W2SError(f"decoder {logit[0]} mixes the base model's token log-probs with other "
                           "models'; an api: base gives none: drop it or use a local base model")
        api = ApiBase(cfg.base, timeout=cfg.api_timeout, max_retries=cfg.api_max_retries,
                      template=cfg.base_prompt, workers=cfg.api_workers,
                      rate_limit=cfg.api_rate_limit)
        model = api.check()
        identity = {"kind": "api", "url": api.url, "model": model}
    else:
        _check_logit_decoders(cfg, decoders, load_tokenizer(cfg.base), tuned_tok)
        identity = {"kind": "local", "model": cfg.base}
    genarm = {}
    if "genarm" in decoders:
        from w2s.methods.search.genarm import plan_arm

        genarm["genarm"] = plan_arm(cfg)
    judge = build_judge(cfg.judge, batch_size=cfg.judge_batch_size, device=cfg.device,
                        dtype=cfg.dtype, reads=cfg.judge_reads)  # a judge model that cannot load fails here too
    return {"judge": judge, "decoders": decoders, "l": chunk, "sampling": _sampling_record(sampling),
            "bon_n": cfg.bon_n or cfg.w * cfg.k, "prompts": prompts, "fingerprint": fingerprint,
            "api": api, "base_identity": identity, "notes": notes, **genarm}


def _check_logit_decoders(cfg: SearchConfig, decoders: list[str], base_tok, tuned_tok) -> None:
    """Every model a logit decoder adds is named, and shares the base model's vocabulary."""
    from w2s.methods.search.guide import same_tokenizer
    from w2s.models import load_tokenizer

    for name in (d for d in decoders if d in LOGIT_DECODERS):
        for role, _ in preset_weights(name, cfg):
            # GenARM's reward model has its initial model's tokenizer until it is trained
            model = role_model(cfg, role) or (genarm_init(cfg) if role == "arm" else "")
            if not model.strip():
                raise W2SError(f"decoder {name} needs --{role.replace('_', '-')} (the aligned "
                               f"version of --base {cfg.base}, e.g. its -chat model)")
            if role == "base":
                continue
            tok = tuned_tok if model == cfg.tuned else load_tokenizer(model)
            if not same_tokenizer(base_tok, tok):
                raise W2SError(f"decoder {name} adds the token log-probs of {model} to the base "
                               f"model's, so it needs one vocabulary, but {cfg.base} and {model} "
                               f"have different tokenizers; drop {name} (cbs and bon work across "
                               "tokenizers)")


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


# --------------------------------------------------------------------------------------------
# models and decoding


def load_models(cfg: SearchConfig, plan: dict) -> dict:
    """The base model (local or API), the guide, and the base causal LM for EFT."""
    from w2s.methods.search.base import HFBase
    from w2s.methods.search.guide import Guide
    from w2s.models import load_causal_lm

    lms: dict[str, tuple] = {}   # every local model by name, loaded once: (model, tokenizer)

    def lm(name: str) -> tuple:
        if name not in lms:
            lms[name] = load_causal_lm(name, dtype=cfg.dtype, device=cfg.device)
        return lms[name]

    (tuned, tokenizer), (untuned, _) = lm(cfg.tuned), lm(cfg.untuned)
    models = {"guide": Guide(tuned, untuned, tokenizer, chat=cfg.chat), "lms": lms}
    if plan["api"] is not None:
        models["base"] = plan["api"]
    else:
        model, base_tok = lm(cfg.base)
        models["base"] = HFBase(model, base_tok, chat=cfg.chat, template=cfg.base_prompt)
        models["base_model"], models["base_tokenizer"] = model, base_tok
        for name in (d for d in plan["decoders"] if d in LOGIT_DECODERS):
            for role, _ in preset_weights(name, cfg):
                lm(role_model(cfg, role, plan.get("arm", "")))
    models["arm"] = plan.get("arm", "")
    return models


def logit_terms(name: str, cfg: SearchConfig, models: dict) -> list:
    """The (model, weight) terms of logit preset ``name``: the base reads ``--base-prompt``,
    every other model ``--small-prompt``, each in its own chat template."""
    from w2s.methods.search.logits import Term

    terms = []
    for role, weight in preset_weights(name, cfg):
        model_name = role_model(cfg, role, models.get("arm", ""))
        model, tok = models["lms"][model_name]
        terms.append(Term(role, model, tok, weight, name=model_name,
                          template=cfg.base_prompt if role == "base" else cfg.small_prompt))
    return terms


def decode(name: str, cfg: SearchConfig, plan: dict, models: dict) -> dict:
    """One decoder over every prompt (``prompt_batch`` at a time), from the run's seed.

    Returns ``{"results", "traces", "compute"}``; results and traces are per prompt.
    """
    import torch

    from w2s.methods.search.decoders import Compute, best_of_n, cbs, plain_sample
    from w2s.methods.search.logits import logit_decode

    base, guide = models["base"], models["guide"]
    sampling = cfg.sampling.sampling_config(batch_size=cfg.prompt_batch, seed=cfg.seed)
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
                      compute=compute, eos_at_cut=cfg.eos_at_cut)
        elif name == "bon":
            out = best_of_n(base, guide, batch, n=plan["bon_n"], max_new_tokens=cfg.max_new_tokens,
                            sampling=sampling, generator=generator, compute=compute,
                            batch_size=cfg.score_batch_size, eos_at_cut=cfg.eos_at_cut)
        elif name == "sample":
            out = plain_sample(base, batch, max_new_tokens=cfg.max_new_tokens, sampling=sampling,
                               generator=generator, compute=compute)
        else:   # a logit-arithmetic preset: eft, proxy, genarm, ed, jailbreak
            out = logit_decode(logit_terms(name, cfg, models), batch,
                               max_new_tokens=cfg.max_new_tokens, sampling=sampling,
                               generator=generator, chat=cfg.chat, compute=compute)
        results.extend(out[0])
        traces.extend(out[1])
    compute.wall_s = time.perf_counter() - t0
    settings = {"cbs": {"w": cfg.w, "k": cfg.k, "l": plan["l"] or "inf"},
                "bon": {"n": plan["bon_n"]}, "sample": {}, "eft": {"beta": cfg.eft_beta},
                "proxy": {"alpha": cfg.proxy_alpha}, "ed": {"alpha": cfg.ed_alpha},
                "genarm": {"alpha": cfg.genarm_alpha, "beta_r": cfg.genarm_beta_r},
                "jailbreak": {"alpha": cfg.jailbreak_alpha}}[name]
    if name in LOGIT_DECODERS:
        settings["terms"] = [{"role": r, "model": role_model(cfg, r, models.get("arm", "")),
                              "weight": w}
                             for r, w in preset_weights(name, cfg)]
    return {"results": results, "traces": traces, "compute": compute.as_dict(),
            "settings": settings}


# --------------------------------------------------------------------------------------------
# judging


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
                                            [results[i]["finished"] or cfg.eos_at_cut
                                             for i in missing],
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

    safety = any(name in SAFETY_DECODERS for name in outputs)
    if safety:   # the attacks' own figure: the refusal-string rule, every decoder alike
        from w2s.evaluation.safety import refused

        for name in outputs:
            for row in rows[name]:
                row["refused"] = refused(row["response"])
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
            "attack_success_rate": (mean(float(not r["refused"]) for r in rows[name])
                                    if safety else None),
            "compute": out["compute"]}
        if name != "sample":
            wr = evaluate_winrate(rows[name], rows["sample"], judge,
                                  run=run, judgments=f"judgments-{name}.jsonl",
                                  log={"decoder": name})
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
        "gold_reward": top["gold_reward_mean"],
        "baseline_gold_reward": per_decoder["sample"]["gold_reward_mean"],
        "guide_score_mean": top["guide_score_mean"],
    }
    for name, figures in per_decoder.items():
        metrics[f"gold_reward_{name}"] = figures["gold_reward_mean"]
        if name != "sample":
            metrics[f"win_rate_{name}"] = figures["win_rate_vs_sample"]
        if safety:
            metrics[f"asr_{name}"] = figures["attack_success_rate"]
    base = dict(plan["base_identity"])
    if plan["api"] is not None:  # what the server made us do: requests, and n it ignored
        base.update(requests=plan["api"].requests,
                    fallback_requests=plan["api"].fallback_requests)
    metrics.update(decoders=per_decoder, sampling=plan["sampling"], judge=judge.identity(),
                   base=base, tuned=cfg.tuned, untuned=cfg.untuned)
    if "genarm" in plan:   # the reward model the genarm decoder used, and how it was made
        spec = plan["genarm"]
        metrics["genarm"] = {"arm": plan.get("arm"), "init": spec.get("init"),
                             "task": spec.get("task"), "pairs": len(spec.get("rows", [])),
                             "beta_r": cfg.genarm_beta_r, "alpha": cfg.genarm_alpha,
                             "stage": plan.get("genarm_record")}
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
