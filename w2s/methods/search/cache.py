"""A batch of growing token sequences kept in one KV cache: reorder rows, extend, rewind.

Chunk-level beam search needs three things from a model's KV cache that ``generate`` does not
give: keep some rows and copy others (the W survivors, K successors each), extend every row by a
different number of tokens (a guide re-reads the text the base model wrote, and a chunk of L base
tokens is any number of guide tokens), and take back the last few tokens of a row (a new chunk
can change how the end of the old text tokenizes: "goo" + "d" -> "good").

:class:`CachedLM` does all three with public transformers APIs only, on any causal LM that
accepts ``attention_mask``, ``position_ids`` and a KV cache argument (``cache`` in transformers
>= 5.24, ``past_key_values`` before; :func:`cache_kwarg` picks the one the model takes):

- **Holes instead of cropping.** Each call appends one right-padded block of columns to the cache.
  The attention mask (one row per sequence, one column per cache column) says which columns hold a
  real token; pad columns and taken-back tokens are simply masked out. Position ids are counted
  over real tokens only (``cumsum(mask) - 1``), so a sequence with holes computes exactly what the
  same tokens would compute packed together.
- **The last token waits.** Every row's tokens are in the cache except its LAST one, which is fed
  on the next call, so that call's logits at that position predict what comes next. A guide
  appends a chunk and reads ``[last, new_1 .. new_{m-1}]`` (logits predicting ``new_1 ..
  new_m``); a sampler reads one token per step.
- **Reordering by index.** :func:`reorder_cache` index-selects the batch dimension of every layer
  through the cache object's public ``reorder_cache`` (transformers' ``Cache`` classes), or of
  every tensor of a legacy tuple cache. Rows may repeat (K successors of one beam) or vanish
  (beams that lost). Never a private model helper: the reference code's ``model._reorder_cache``
  vanished in transformers 4.46.
"""

from __future__ import annotations

import torch

from w2s import compute as accounting


def cache_kwarg(model) -> str:
    """The name under which ``model.forward`` takes (and its output returns) the KV cache:
    ``cache`` in newer transformers (``past_key_values`` is deprecated there), else
    ``past_key_values``."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def reorder_cache(cache, index: torch.Tensor):
    """Keep the rows ``index`` of a KV cache, in that order (repeats allowed); returns the cache.

    A transformers ``Cache`` (``DynamicCache`` and friends) is reordered in place through its
    public ``reorder_cache`` method; a legacy cache (a tuple of per-layer tuples of tensors whose
    first dimension is the batch) is rebuilt with ``index_select`` on every tensor.
    """
    if cache is None:
        return None
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(index)
        return cache
    return tuple(tuple(t.index_select(0, index.to(t.device)) for t in layer) for layer in cache)


class CachedLM:
    """A causal LM holding a batch of token sequences ("rows") in a KV cache.

    ::

        lm = CachedLM(model, pad_id)
        lm.start([[5, 6, 7], [8, 9]])        # two rows; all but the last token of each is read
        lm.select([0, 0, 1])                 # row 0 twice, then row 1 (KV cache reordered)
        lm.push(0, [10, 11]); lm.push(2, [12])
        logits, fed = lm.feed(leave_last=True)
        # row 0 read [7, 10]: logits[0, :2] predict 10, 11; row 2 read [9]: logits[2, 0] predicts 12

    ``tokens_read`` counts the real tokens that went through the model since :meth:`start` (the
    compute spent).
    """

    def __init__(self, model, pad_id: int):
        self.model = model
        self.pad_id = int(pad_id)
        self.device = next(model.parameters()).device
        self.cache = None
        self._cache_kwarg = cache_kwarg(model)
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)
        self.tokens: list[list[int]] = []   # every token of every row
        self.n_cached: list[int] = []       # how many of them are in the cache
        self.tokens_read = 0

    @property
    def rows(self) -> int:
        return len(self.tokens)

    def start(self, sequences: list[list[int]]) -> None:
        """New rows, one per (non-empty) token sequence; reads all but each one's last token."""
        if any(len(s) == 0 for s in sequences):
            raise ValueError("every sequence needs at least one token")
        self.cache = None
        self.tokens_read = 0
        self.tokens = [list(s) for s in sequences]
        self.n_cached = [0] * len(sequences)
        self.mask = torch.zeros(len(sequences), 0, dtype=torch.long, device=self.device)
        self.feed(leave_last=True, logits=False)

    def select(self, index) -> None:
        """Keep rows ``index`` (a list or 1-D tensor of row numbers; repeats copy a row)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.device)
        self.cache = reorder_cache(self.cache, idx)
        self.mask = self.mask.index_select(0, idx)
        self.tokens = [list(self.tokens[i]) for i in idx.tolist()]
        self.n_cached = [self.n_cached[i] for i in idx.tolist()]

    def push(self, row: int, tokens: list[int]) -> None:
        """Append tokens to a row (read by the next :meth:`feed`)."""
        self.tokens[row].extend(tokens)

    def rewind(self, row: int, n: int) -> None:
        """Take back the last ``n`` tokens of a row.

        Their cache columns are masked out, and so is the column of the token that becomes the
        last one: it is read again by the next :meth:`feed`, whose logits there predict the
        tokens pushed after it. Reading a token again at the same position gives the same keys
        and values, so the result is exactly that of never having read the taken-back tokens.
        """
        if n <= 0:
            return
        if n >= len(self.tokens[row]):
            raise ValueError(f"cannot take back {n} of the {len(self.tokens[row])} tokens of row "
                             f"{row}: a row keeps at least one token")
        del self.tokens[row][-n:]
        keep = min(self.n_cached[row], len(self.tokens[row]) - 1)
        if keep < self.n_cached[row]:
            cols = self.mask[row].nonzero().squeeze(-1)[keep:]
            self.mask[row, cols] = 0
            self.n_cached[row] = keep

    def feed(self, leave_last: bool, logits: bool = True
             ) -> tuple[torch.Tensor | None, list[int]]:
        """Read every row's unread tokens (all but the last one when ``leave_last``).

        Returns ``(logits, fed)``: logits ``[rows, width, vocab]`` in the model's dtype, where
        ``logits[r, j]`` is the distribution of the token after row r's j-th token read now
        (j < fed[r]; the rest is padding), or None when no row had anything to read or
        ``logits`` is False (a prompt's prefill: its logits over the vocabulary at every
        position are never built).
        """
        leave = 1 if leave_last else 0
        chunks = [t[n:len(t) - leave] for t, n in zip(self.tokens, self.n_cached, strict=True)]
        fed = [len(c) for c in chunks]
        width = max(fed, default=0)
        if width == 0:
            return None, fed
        ids = torch.tensor([c + [self.pad_id] * (width - len(c)) for c in chunks],
                           dtype=torch.long, device=self.device)
        new = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunks],
                           dtype=torch.long, device=self.device)
        mask = torch.cat([self.mask, new], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -width:]
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                  self._cache_kwarg: self.cache, "use_cache": True}
        with torch.no_grad():
            if logits:
                out = self.model(**kwargs)
            else:
                try:
                    out = self.model(**kwargs, logits_to_keep=1)
                except TypeError:  # a model without logits_to_keep
                    out = self.model(**kwargs)
        self.cache = getattr(out, self._cache_kwarg)
        self.mask = mask
        self.n_cached = [n + f for n, f in zip(self.n_cached, fed, strict=True)]
        self.tokens_read += sum(fed)
        accounting.count(forward=sum(fed))  # the run's compute record (w2s.compute)
        return (out.logits if logits else None), fed
