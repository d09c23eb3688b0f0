"""The guide: V(x, y) = log pi_tuned(y | x) - log pi_untuned(y | x), on text.

Two small models that share a tokenizer (a tuned one and the one it was tuned from) score a
response by how much more the tuning made it likely. Where the base model writes text the guides
only read it: each candidate's text is re-encoded with the guides' tokenizer and chat template
(:mod:`w2s.methods.search.text`), so the base model may have any tokenizer, or be a black-box API.

:class:`Guide` scores a batch of growing responses INCREMENTALLY: each guide model keeps its own
KV cache (:class:`~w2s.methods.search.cache.CachedLM`), so after every chunk it reads only the new
tokens, never the whole prefix again (the reference code re-read it). When the new text changes
how the end of the old text tokenizes, the tokens that changed are taken back and read again; the
score is therefore always the from-scratch score of the current text (:func:`score_texts`, which
the tests compare it with). Log-probs come from :func:`w2s.models.sequence_logprobs` (gather +
logsumexp in chunks; no fp32 logits over the vocabulary for the whole sequence).
"""

from __future__ import annotations

import torch

from w2s.errors import W2SError
from w2s.methods.search.cache import CachedLM
from w2s.methods.search.text import encode_prompt, encode_response
from w2s.models.batching import pad_right, spans_mask
from w2s.models.loading import pad_id
from w2s.models.logprobs import response_logprobs, sequence_logprobs


def same_tokenizer(a, b) -> bool:
    """True when two tokenizers map every token string to the same id, and agree on EOS."""
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Guide:
    """A tuned/untuned pair scoring a batch of responses as they grow.

    ::

        guide = Guide(tuned, untuned, tokenizer, chat=False)
        guide.start(["The movie was"], rows=[0, 0])     # two candidates of prompt 0
        guide.update([" great", " bad"], [False, False])  # -> V of each
        guide.select([0, 0])                              # keep candidate 0, twice
        guide.update([" great fun", " great."], [False, True])
    """

    def __init__(self, tuned, untuned, tokenizer, *, chat: bool):
        self.tokenizer = tokenizer
        self.chat = chat
        pad = pad_id(tokenizer)
        self.lms = {"tuned": CachedLM(tuned, pad), "untuned": CachedLM(untuned, pad)}
        self.tokens_scored = 0   # response tokens scored, both models together (this search)
        self.retokenized = 0     # tokens taken back because new text changed their tokenization

    @property
    def tokens_read(self) -> int:
        """Tokens that went through the guide models (prompts, responses, re-reads), both models."""
        return sum(lm.tokens_read for lm in self.lms.values())

    def start(self, prompts: list[str], rows: list[int]) -> None:
        """One candidate per entry of ``rows`` (a prompt index), each with an empty response.

        Every prompt is read once and its cache copied to its candidates.
        """
        self.tokens_scored = self.retokenized = 0
        self.prompts = prompts
        self.prompt_ids = [encode_prompt(self.tokenizer, p, self.chat) for p in prompts]
        self.row_prompt = list(rows)
        self.response = [[] for _ in rows]
        self.logps = {name: [[] for _ in rows] for name in self.lms}
        for lm in self.lms.values():
            lm.start(self.prompt_ids)
            lm.select(rows)

    def select(self, index: list[int]) -> None:
        """Keep candidates ``index`` (repeats copy one)."""
        for lm in self.lms.values():
            lm.select(index)
        self.row_prompt = [self.row_prompt[i] for i in index]
        self.response = [list(self.response[i]) for i in index]
        self.logps = {k: [list(v[i]) for i in index] for k, v in self.logps.items()}

    def update(self, texts: list[str], finished: list[bool]) -> dict[str, list[float]]:
        """Every candidate's response is now ``texts[r]`` (finished: + EOS); score them.

        Returns ``{"score", "tuned", "untuned"}``: per candidate V and the two sequence
        log-probs it is the difference of.
        """
        if len(texts) != len(self.response) or len(finished) != len(self.response):
            raise ValueError(f"{len(texts)} texts for {len(self.response)} candidates")
        news: list[list[int]] = []
        for r, (text, done) in enumerate(zip(texts, finished, strict=True)):
            p = self.row_prompt[r]
            target = encode_response(self.tokenizer, self.prompts[p], self.prompt_ids[p], text,
                                     self.chat, done)
            keep = _common_prefix(self.response[r], target)
            drop = len(self.response[r]) - keep
            if drop:
                self.retokenized += drop
                for name, lm in self.lms.items():
                    lm.rewind(r, drop)
                    del self.logps[name][r][keep:]
            new = target[keep:]
            for lm in self.lms.values():
                lm.push(r, new)
            self.response[r] = target
            news.append(new)
        for name, lm in self.lms.items():
            logits, fed = lm.feed(leave_last=True)
            if logits is None:
                continue
            width = logits.shape[1]
            labels = torch.zeros(len(news), width, dtype=torch.long, device=logits.device)
            mask = torch.zeros(len(news), width, dtype=torch.long, device=logits.device)
            for r, new in enumerate(news):
                if fed[r] != len(new):  # the invariant of CachedLM: only the last token waits
                    raise RuntimeError(f"guide row {r} read {fed[r]} tokens for {len(new)} new")
                if new:
                    labels[r, :len(new)] = torch.tensor(new)
                    mask[r, :len(new)] = 1
            per_token, _ = sequence_logprobs(logits, labels, mask)
            values = per_token.tolist()
            for r, new in enumerate(news):
                self.logps[name][r].extend(values[r][:len(new)])
            self.tokens_scored += int(mask.sum())
        return self.scores()

    def score_texts(self, prompts: list[str], texts: list[str], finished: list[bool],
                    batch_size: int = 16) -> dict[str, list]:
        """V of complete responses read from scratch (see :func:`score_texts`)."""
        return score_texts(self.lms["tuned"].model, self.lms["untuned"].model, self.tokenizer,
                           prompts, texts, finished, chat=self.chat, batch_size=batch_size)

    def scores(self) -> dict[str, list[float]]:
        tuned = [sum(v) for v in self.logps["tuned"]]
        untuned = [sum(v) for v in self.logps["untuned"]]
        return {"score": [a - b for a, b in zip(tuned, untuned, strict=True)],
                "tuned": tuned, "untuned": untuned}


def score_texts(tuned, untuned, tokenizer, prompts: list[str], texts: list[str],
                finished: list[bool], *, chat: bool, batch_size: int = 16
                ) -> dict[str, list[float]]:
    """V of complete responses, each read from scratch (no cache): the reference for
    :class:`Guide` and the scorer of best-of-N. ``prompts[i]`` is the prompt of ``texts[i]``.

    Returns ``{"score", "tuned", "untuned", "response_ids", "tokens_read"}``.
    """
    if batch_size < 1:
        raise W2SError(f"batch_size must be >= 1, got {batch_size}")
    pad = pad_id(tokenizer)
    seqs = []
    for prompt, text, done in zip(prompts, texts, finished, strict=True):
        p_ids = encode_prompt(tokenizer, prompt, chat)
        seqs.append((p_ids, encode_response(tokenizer, prompt, p_ids, text, chat, done)))
    out: dict[str, list[float]] = {"tuned": [], "untuned": []}
    for start in range(0, len(seqs), batch_size):
        batch = seqs[start:start + batch_size]
        ids, attn = pad_right([p + r for p, r in batch], pad)
        resp = spans_mask([len(p) for p, _ in batch], [len(p) + len(r) for p, r in batch],
                          ids.shape[1])
        for name, model in (("tuned", tuned), ("untuned", untuned)):
            dev = next(model.parameters()).device
            with torch.no_grad():
                _, summed = response_logprobs(model, ids.to(dev), attn.to(dev), resp.to(dev))
            out[name].extend(summed.tolist())
    score = [a - b for a, b in zip(out["tuned"], out["untuned"], strict=True)]
    read = 2 * sum(len(p) + len(r) for p, r in seqs)
    return {"score": score, "tuned": out["tuned"], "untuned": out["untuned"],
            "response_ids": [r for _, r in seqs], "tokens_read": read}
