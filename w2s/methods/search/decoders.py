"""The decoders: chunk-level beam search and the baselines it is compared with.

All four take a batch of prompts and return, per prompt, the chosen response with its guide
score; every one samples the base model through the same loop (:mod:`w2s.methods.search.base`), so with
one seed their random draws line up:

- :func:`cbs` -- chunk-level beam search CBS(W, K, L): W*K samples of the prompt; repeat: sample L
  more tokens for every candidate, score each by the guide (incrementally), keep the top W, give
  each K successors (the KV caches reordered by index), until every kept beam has finished or
  ``max_new_tokens`` is reached. A candidate that finished is kept ONCE in a pool of finished
  candidates, competing for the top W with its score (the reference code copied it K times,
  filling slots with duplicates); the answer is the best candidate seen.
- :func:`best_of_n` -- N samples, each scored from scratch; the best one. Equal to CBS(1, N, inf).
- :func:`plain_sample` -- one sample per prompt, no guide. Equal to CBS(1, 1, inf).
- :func:`eft` -- emulated fine-tuning, token by token:
  ``log p_base + beta (log p_tuned - log p_untuned)``, which needs one vocabulary for all three;
  a preset of the logit-arithmetic engine (:mod:`w2s.methods.search.logits`), like proxy-tuning,
  emulated disalignment and weak-to-strong jailbreaking.

Each returns ``(results, traces)``: ``results[p]`` the chosen response of prompt p
(``response``, ``finished``, ``tokens``, ``score``, ``logp_tuned``, ``logp_untuned``,
``score_trace``: its score after every chunk), ``traces[p]`` every candidate that was scored,
round by round, with its parent beam, the chunk it added (the text after its parent's, by
position: a UTF-8 character the parent's chunk cut in half shows as U+FFFD at the parent's end),
its score and whether it was selected.
"""

from __future__ import annotations

import torch

from w2s.methods.search.guide import Guide
from w2s.methods.search.logits import Term, logit_decode
from w2s.methods.search.meter import Clock, Compute
from w2s.models.generate import SamplingConfig

__all__ = ["Clock", "Compute", "best_of_n", "cbs", "eft", "plain_sample"]


def _by_prompt(row_prompt: list[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for r, p in enumerate(row_prompt):
        groups.setdefault(p, []).append(r)
    return groups


def _result(c: dict) -> dict:
    return {"response": c["text"], "finished": c["finished"], "tokens": c["tokens"],
            "score": c["score"], "logp_tuned": c["tuned"], "logp_untuned": c["untuned"],
            "score_trace": c["trace"], "beam": c["id"]}


def _record(c: dict, selected: bool) -> dict:
    return {"beam": c["id"], "parent": c["parent"], "chunk": c["chunk"], "score": c["score"],
            "logp_tuned": c["tuned"], "logp_untuned": c["untuned"], "finished": c["finished"],
            "tokens": c["tokens"], "selected": selected}


def cbs(base, guide: Guide, prompts: list[str], *, w: int, k: int, l: int | None,  # noqa: E741
        max_new_tokens: int, sampling: SamplingConfig, generator: torch.Generator | None,
        compute: Compute | None = None, eos_at_cut: bool = False
        ) -> tuple[list[dict], list[list[list[dict]]]]:
    """Chunk-level beam search CBS(W, K, L) over a batch of prompts (``l`` None = inf).

    ``eos_at_cut``: a candidate cut at ``max_new_tokens`` is scored with EOS appended, as if it
    ended there (the authors' code); off, it is scored as the unfinished text it is.

    ``base``: an :class:`~w2s.methods.search.base.HFBase` or :class:`~w2s.methods.search.base.ApiBase`;
    ``guide``: a :class:`~w2s.methods.search.guide.Guide`. Rows of every prompt are sampled and scored
    together; a prompt whose search is over leaves the batch.
    """
    compute = compute or Compute()
    clock = Clock(compute, getattr(base, "device", None))
    rows = [p for p in range(len(prompts)) for _ in range(w * k)]
    with clock("base"):
        base.start(prompts, rows)
    with clock("guide"):
        guide.start(prompts, rows)
    beam: list[str | None] = [None] * len(rows)   # the candidate each row continues
    trace: list[list[float]] = [[] for _ in rows]  # that candidate's score after every chunk
    before = ["" for _ in rows]                    # and its text
    pools: list[list[dict]] = [[] for _ in prompts]   # finished candidates, each kept once
    traces: list[list[list[dict]]] = [[] for _ in prompts]
    best: list[dict | None] = [None] * len(prompts)
    written, rnd = 0, 0
    while rows:
        chunk = max_new_tokens - written if l is None else min(l, max_new_tokens - written)
        with clock("base"):
            base.sample(chunk, sampling, generator)
        written += chunk
        texts, finished, lengths = base.texts(), list(base.finished), base.lengths()
        out_of_tokens = written >= max_new_tokens
        with clock("guide"):
            scores = guide.update(texts, [f or (eos_at_cut and out_of_tokens) for f in finished])
        keep: list[int] = []
        new_beam, new_trace, new_before = [], [], []
        for p, rs in _by_prompt(base.row_prompt).items():
            cands = []
            for j, r in enumerate(rs):
                score = scores["score"][r]
                cands.append({"id": f"{rnd}.{j}", "parent": beam[r], "row": r,
                              "chunk": texts[r][len(before[r]):], "text": texts[r],
                              "score": score, "tuned": scores["tuned"][r],
                              "untuned": scores["untuned"][r], "finished": finished[r],
                              "tokens": lengths[r], "trace": trace[r] + [score],
                              "done": finished[r] or out_of_tokens})
            alive = [c for c in cands if not c["done"]]
            pools[p].extend(c for c in cands if c["done"])
            top = sorted(pools[p] + alive, key=lambda c: -c["score"])[:w]  # stable: ties keep order
            chosen = {id(c) for c in top}
            traces[p].append([_record(c, id(c) in chosen) for c in cands])
            survivors = [c for c in top if not c["done"]]
            if not survivors:
                best[p] = top[0]
                continue
            for c in survivors:
                keep.extend([c["row"]] * k)
                new_beam.extend([c["id"]] * k)
                new_trace.extend([c["trace"]] * k)
                new_before.extend([c["text"]] * k)
        rnd += 1
        if not keep:
            break
        with clock("base"):
            base.select(keep)
        with clock("guide"):
            guide.select(keep)
        rows, beam, trace, before = keep, new_beam, new_trace, new_before
    compute.rows_per_prompt = max(compute.rows_per_prompt, w * k)
    compute.base_tokens += base.tokens_sampled
    compute.guide_tokens_scored += guide.tokens_scored
    compute.guide_tokens_read += guide.tokens_read
    compute.retokenized += guide.retokenized
    compute.rounds += rnd
    return [_result(b) for b in best], traces


def best_of_n(base, guide: Guide, prompts: list[str], *, n: int, max_new_tokens: int,
              sampling: SamplingConfig, generator: torch.Generator | None,
              compute: Compute | None = None, batch_size: int = 16, eos_at_cut: bool = False
              ) -> tuple[list[dict], list[list[list[dict]]]]:
    """Best-of-N: ``n`` complete samples per prompt, each scored from scratch; the best one
    (the first of equal scores). ``eos_at_cut`` as in :func:`cbs`."""
    compute = compute or Compute()
    clock = Clock(compute, getattr(base, "device", None))
    rows = [p for p in range(len(prompts)) for _ in range(n)]
    with clock("base"):
        base.start(prompts, rows)
        base.sample(max_new_tokens, sampling, generator)
    texts, finished, lengths = base.texts(), list(base.finished), base.lengths()
    with clock("guide"):
        s = guide.score_texts([prompts[p] for p in rows], texts,
                              [f or eos_at_cut for f in finished], batch_size=batch_size)
    results, traces = [], []
    for _p, rs in _by_prompt(rows).items():
        cands = [{"id": f"0.{j}", "parent": None, "row": r, "chunk": texts[r], "text": texts[r],
                  "score": s["score"][r], "tuned": s["tuned"][r], "untuned": s["untuned"][r],
                  "finished": finished[r], "tokens": lengths[r], "trace": [s["score"][r]]}
                 for j, r in enumerate(rs)]
        top = max(cands, key=lambda c: c["score"])  # max keeps the first of equal scores
        results.append(_result(top))
        traces.append([[_record(c, c is top) for c in cands]])
    compute.rows_per_prompt = max(compute.rows_per_prompt, n)
    compute.base_tokens += base.tokens_sampled
    compute.guide_tokens_scored += 2 * sum(len(x) for x in s["response_ids"])
    compute.guide_tokens_read += s["tokens_read"]
    compute.rounds += 1
    return results, traces


def plain_sample(base, prompts: list[str], *, max_new_tokens: int, sampling: SamplingConfig,
                 generator: torch.Generator | None, compute: Compute | None = None
                 ) -> tuple[list[dict], list[list[list[dict]]]]:
    """One sample per prompt, no guide (the baseline of every win rate)."""
    compute = compute or Compute()
    clock = Clock(compute, getattr(base, "device", None))
    rows = list(range(len(prompts)))
    with clock("base"):
        base.start(prompts, rows)
        base.sample(max_new_tokens, sampling, generator)
    texts, finished, lengths = base.texts(), list(base.finished), base.lengths()
    results = [{"response": t, "finished": f, "tokens": n, "score": None, "logp_tuned": None,
                "logp_untuned": None, "score_trace": [], "beam": "0.0"}
               for t, f, n in zip(texts, finished, lengths, strict=True)]
    compute.base_tokens += base.tokens_sampled
    compute.rounds += 1
    return results, [[] for _ in prompts]


def eft(base_model, base_tokenizer, guide: Guide, prompts: list[str], *, beta: float,
        max_new_tokens: int, sampling: SamplingConfig, generator: torch.Generator | None, chat: bool,
        compute: Compute | None = None, base_template: str = "{prompt}") -> tuple[list[dict], list[list[list[dict]]]]:
    """Emulated fine-tuning: sample each token from
    ``log p_base + beta * (log p_tuned - log p_untuned)`` (then temperature, top-k, top-p).

    A preset of the logit-arithmetic engine (:func:`~w2s.methods.search.logits.logit_decode`):
    terms (base, 1), (tuned, +beta), (untuned, -beta). The three models must share one
    vocabulary; the base reads ``base_template``, the guides the raw prompt in the guides'
    tokenizer's chat template, and every sampled token is appended to all three KV caches. The
    results carry no guide score: V is defined on text, score it with :meth:`Guide.score_texts`.
    """
    terms = [Term("base", base_model, base_tokenizer, 1.0, base_template),
             Term("tuned", guide.lms["tuned"].model, guide.tokenizer, beta),
             Term("untuned", guide.lms["untuned"].model, guide.tokenizer, -beta)]
    return logit_decode(terms, prompts, max_new_tokens=max_new_tokens, sampling=sampling,
                        generator=generator, chat=chat, compute=compute)
