"""A quick, real check that a model loads and scores text sensibly.

``w2s models --check NAME`` loads the model the way every method does (converting and caching a
packaged offline model on first use), then scores two continuations of one prompt with the shared
log-prob helper. A pretrained model should give the true continuation the higher log-prob; a tiny
random model has no reason to, and the result says so rather than pretending.
"""

from __future__ import annotations

import time

import torch

from w2s.models.loading import load_causal_lm, param_count
from w2s.models.logprobs import response_logprobs
from w2s.models.resolve import resolve_model

PROMPT = "The capital of France is"
TRUE, FALSE = " Paris.", " a banana."


def check_model(name: str, *, device: str = "auto") -> dict:
    """Load ``name`` and compare log p(TRUE | PROMPT) with log p(FALSE | PROMPT).

    Returns a dict with the resolved source, parameter count, dtype, device, load seconds and the
    two summed log-probs (``logp_true``, ``logp_false``) and ``prefers_true``.
    """
    resolved = resolve_model(name)
    t0 = time.perf_counter()
    model, tok = load_causal_lm(resolved, device=device)
    load_s = time.perf_counter() - t0
    model.eval()
    prompt_ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    scores = {}
    for key, cont in (("logp_true", TRUE), ("logp_false", FALSE)):
        full = tok(PROMPT + cont, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([full], device=model.device)
        attn = torch.ones_like(ids)
        resp = torch.zeros_like(ids)
        resp[0, len(prompt_ids):] = 1  # score the continuation only
        with torch.no_grad():
            _, summed = response_logprobs(model, ids, attn, resp)
        scores[key] = float(summed[0])
    return {
        "model": name, "source": resolved.source, "location": str(resolved.location),
        "params": param_count(model), "dtype": str(next(model.parameters()).dtype).replace(
            "torch.", ""), "device": str(model.device), "load_s": round(load_s, 2),
        "prompt": PROMPT, "true": TRUE, "false": FALSE, **scores,
        "prefers_true": scores["logp_true"] > scores["logp_false"],
    }
