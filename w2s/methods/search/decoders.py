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
  ``log p_base + beta (log p_tuned - log p_untuned)``, which needs one vocabulary for all three.

Each returns ``(results, traces)``: ``results[p]`` the chosen response of prompt p
(``response``, ``finished``, ``tokens``, ``score``, ``logp_tuned``, ``logp_untuned``,
``score_trace``: its score after every chunk), ``traces[p]`` every candidate that was scored,
round by round, with its parent beam, the chunk it added (the text after its parent's, by
position: a UTF-8 character the parent's chunk cut in half shows as U+FFFD at the parent's end),
its score and whether it was selected.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from w2s.methods.search.base import base_text
from w2s.methods.search.cache import CachedLM
from w2s.methods.search.guide import Guide
from w2s.methods.search.text import encode_prompt, eos_ids, sample_next
from w2s.models.generate import SamplingConfig
from w2s.models.loading import pad_id

DECODERS = ("cbs", "bon", "sample", "eft")


@dataclass
class Compute:
    """What one decoder spent (summed over prompt batches)."""

    rows_per_prompt: int = 1            # candidates sampled in parallel per prompt
    base_tokens: int = 0                # tokens the base model sampled
    guide_tokens_scored: int = 0        # response tokens scored, both guide models together
    guide_tokens_read: int = 0          # tokens through the guide models (+ prompts, re-reads)
    retokenized: int = 0                # guide tokens taken back when new text re-tokenized
    rounds: int = 0                     # chunks (selection rounds), summed over prompt batches
    base_s: float = 0.0                 # wall time in the base model (sampling, reordering)
    guide_s: float = 0.0                # wall time in the guide models
    wall_s: float = 0.0                 # the whole decoder
    timer: Callable[[], float] = field(default=time.perf_counter, repr=False)
    """What the ``*_s`` figures count: wall time; benchmarks on a shared CPU use
    ``time.process_time`` (this process's CPU time, blind to other processes)."""

    def as_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "timer"}
        for key in ("base_s", "guide_s", "wall_s"):
            out[key] = round(out[key], 4)
        return out


class Clock:
    """Adds the wall time of ``with clock("base"):`` blocks to a :class:`Compute` (waiting for
    the GPU first, so the time is the work's, not the launch's)."""

    def __init__(self, compute: Compute, device: torch.device | None = None):
        self.compute = compute
        self.cuda = device is not None and device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, what: str):
        if self.cuda:
            torch.cuda.synchronize()
        t0 = self.compute.timer()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            setattr(self.compute, f"{what}_s",
                    getattr(self.compute, f"{what}_s") + self.compute.timer() - t0)


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

    The three models must share one vocabulary (checked by the caller); each reads the prompt in
    its own chat template, and every sampled token is appended to all three KV caches. The
    results carry no guide score: V is defined on text, score it with :meth:`Guide.score_texts`.
    """
    compute = compute or Compute()
    device = next(base_model.parameters()).device
    clock = Clock(compute, device)
    vocab = len(base_tokenizer)
    stop = eos_ids(base_model, base_tokenizer)
    pad = pad_id(base_tokenizer)
    lms = {"base": CachedLM(base_model, pad), **guide.lms}
    with clock("base"):
        lms["base"].start([encode_prompt(base_tokenizer, base_text(base_template, p), chat)
                           for p in prompts])
    with clock("guide"):
        for name in ("tuned", "untuned"):
            lms[name].start([encode_prompt(guide.tokenizer, p, chat) for p in prompts])
    response: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    sampled = 0  # base tokens of this call (compute's counters run over every call)
    for _ in range(max_new_tokens):
        if all(finished):
            break
        step = {}
        for name, lm in lms.items():
            with clock("base" if name == "base" else "guide"):
                logits, _ = lm.feed(leave_last=False)
                step[name] = logits[:, 0, :vocab].float().log_softmax(-1)
        combined = step["base"] + beta * (step["tuned"] - step["untuned"])
        tokens = sample_next(combined, sampling.temperature, sampling.top_k, sampling.top_p,
                             generator)
        for r, tok in enumerate(tokens.tolist()):
            if finished[r]:
                continue
            compute.base_tokens += 1
            sampled += 1
            if tok in stop:
                finished[r] = True
                continue
            response[r].append(tok)
            for lm in lms.values():
                lm.push(r, [tok])
    compute.guide_tokens_scored += 2 * sampled  # each guide scored every sampled token
    compute.guide_tokens_read += lms["tuned"].tokens_read + lms["untuned"].tokens_read
    compute.rounds += 1
    results = [{"response": base_tokenizer.decode(ids, skip_special_tokens=True),
                "finished": done, "tokens": len(ids), "score": None, "logp_tuned": None,
                "logp_untuned": None, "score_trace": [], "beam": "0.0"}
               for ids, done in zip(response, finished, strict=True)]
    return results, [[] for _ in prompts]
