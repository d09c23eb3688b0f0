"""Tiny models that have read something: ``tiny:<arch>-<L>x<H>+<corpus>[@steps]+...``.

A randomly initialised tiny model writes byte noise, so no gold judge can tell its outputs apart
and no W2S method shows anything on it. Appending corpus stages to a tiny name trains it, through
the one training loop, on the text of a task before use::

    tiny:llama-2x64+toy-sentiment            pretrained on every toy-sentiment training review
    tiny:llama-2x64+toy-sentiment+toy-sentiment=1@100
                                             ... then 100 more steps on the positive ones only
    tiny:llama-1x32+toy-preference           on prompts answered politely AND rudely
    tiny:llama-1x32+toy-preference=chosen    on the polite answers only

A stage is ``<task>[=<selector>][@<steps>]``:

- ``task``: any task name ``load_task`` knows; its ``train`` split is read (the test split stays
  unseen). Classification rows give their ``text`` as plain text; preference rows give the prompt
  and response in the tiny chat template (``<|user|>prompt</s><|assistant|>response</s>``), both
  responses unless a selector says ``chosen`` or ``rejected``; prompts rows with a reference give
  prompt and reference the same way.
- ``selector``: for classification a label (``=1`` keeps the positive rows), for preference
  ``chosen`` or ``rejected``.
- ``steps``: optimizer steps of that stage (default :data:`~w2s.models.tiny.DEFAULT_STEPS`),
  batch 32, lr 3e-3 (cosine, 5% warm-up), sequences cut at 256 tokens, seed 0.

Each stage continues from the previous one and is cached on its own (:class:`w2s.runs.Cache`,
keyed by the whole name up to that stage, a hash of every stage's text and the settings), so
``+a+b`` reuses ``+a``, and a corpus whose rows change gives a new model, never a stale one.
The result is a ``save_pretrained`` folder with the shared tiny tokenizer: every tiny model still shares one
vocabulary, so token-level methods (WSPO, EFT) work between any two of them.

How a stage is WRITTEN (:class:`~w2s.models.tiny.Stage`, :func:`~w2s.models.tiny.split_name`,
:func:`~w2s.models.tiny.canonical`) is the model layer's: resolving a name trains nothing. How it
is TRAINED is here, above the training loop. The model layer loads such a name through its table
of builders (:mod:`w2s.models.builders`); importing this module registers :func:`build` there.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from w2s.data import load_task
from w2s.data.reasoning import question_prompt
from w2s.errors import W2SError
from w2s.models.builders import register_builder
from w2s.models.loading import format_chat
from w2s.models.tiny import CORPUS_VERSION, Stage, build_tiny, split_name, tiny_tokenizer
from w2s.runs import Cache, cached_stage, content_hash
from w2s.train import TrainConfig
from w2s.train.launch import process_precision
from w2s.train.lm import train_lm

STAGE_BATCH = 32
STAGE_LR = 3e-3
MAX_TOKENS = 256
REASONING_DOC = 3
"""Problems per training text of a reasoning corpus stage (at most about 430 bytes, read whole: a tiny
model then knows every position a two-shot prompt and its answer take)."""
REASONING_MAX_TOKENS = 512
"""A reasoning stage's texts are cut here (the tiny models' positions), not at MAX_TOKENS."""
VERSION = CORPUS_VERSION
"""Part of every stage's cache key; the model layer keeps it (:data:`w2s.models.tiny.CORPUS_VERSION`)
because :func:`w2s.models.resolve.model_identity` names it too."""

PATTERN = r"^tiny:[^+]+\+"
"""The names this module builds: a tiny model with at least one corpus stage."""


def stage_texts(stage: Stage, tokenizer) -> list[str]:
    """The training texts of one stage (see the module docstring for what each kind gives)."""
    return stage_corpus(stage, tokenizer)[0]


def stage_corpus(stage: Stage, tokenizer) -> tuple[list[str], int]:
    """The training texts of one stage and the length they are cut at: :data:`MAX_TOKENS`,
    or :data:`REASONING_MAX_TOKENS` for a reasoning task's documents of several problems."""
    data = load_task(stage.task, split="train")
    eos = tokenizer.eos_token
    sel = stage.selector
    texts: list[str] = []
    if data.kind == "classification":
        if sel is not None and not sel.isdigit():
            raise W2SError(f"corpus stage '+{stage}': a classification task takes a label "
                           f"selector (e.g. ={data.rows[0]['label']}), got '={sel}'")
        texts = [r["text"] + eos for r in data.rows if sel is None or r["label"] == int(sel)]
    elif data.kind == "preference":
        if sel not in (None, "chosen", "rejected"):
            raise W2SError(f"corpus stage '+{stage}': a preference task takes =chosen or "
                           f"=rejected, got '={sel}'")
        fields = [sel] if sel else ["chosen", "rejected"]
        texts = [format_chat(tokenizer, r["prompt"], r[f]) + eos for r in data.rows for f in fields]
    elif data.kind == "reasoning":
        if sel is not None:
            raise W2SError(f"corpus stage '+{stage}': a reasoning task takes no selector")
        solved = [f"{question_prompt(r['prompt'])} {r['solution']}" for r in data.rows]
        # documents of REASONING_DOC problems a blank line apart: a few-shot prompt is then
        # text the model has read, so it can answer in context as well as zero-shot
        texts = ["\n\n".join(solved[i:i + REASONING_DOC]) + eos
                 for i in range(0, len(solved), REASONING_DOC)]
    else:
        if sel is not None:
            raise W2SError(f"corpus stage '+{stage}': a prompts task takes no selector")
        texts = [format_chat(tokenizer, r["prompt"], r["reference"]) + eos
                 for r in data.rows if r.get("reference")]
    if not texts:
        raise W2SError(f"corpus stage '+{stage}' selects no text from task '{stage.task}'; "
                       "check the selector")
    return texts, REASONING_MAX_TOKENS if data.kind == "reasoning" else MAX_TOKENS


def pretrained_path(location: str, log=None) -> Path:
    """The cached ``save_pretrained`` folder of a tiny model with corpus stages (built once).

    ``location`` is the resolved tiny location, e.g. ``"llama-2x64+toy-sentiment"``.
    """
    base, stages = split_name(location)
    if not stages:
        raise ValueError(f"{location} has no corpus stage")
    cache = Cache()
    tok = tiny_tokenizer()
    done = [base]
    texts_seen: list[str] = []
    previous: Path | None = None
    for stage in stages:
        done.append(str(stage))
        name = "+".join(done)
        texts, max_tokens = stage_corpus(stage, tok)
        # the key names every stage so far AND hashes their text: a corpus whose rows change
        # (a new version of a task) gives a new model, never a stale one
        texts_seen.append(content_hash(texts))
        precision = process_precision()  # one accelerate precision per process: the caller's
        with cached_stage(cache, f"tiny-{name}", "pretrain", name=name,
                          texts=texts_seen, batch=STAGE_BATCH, lr=STAGE_LR,
                          max_tokens=max_tokens, version=VERSION,
                          **({"mixed_precision": precision} if precision != "no" else {})) as st:
            if not st.done:
                _train_stage(st, base, previous, stage, texts, precision, log, max_tokens)
        previous = st.path
    return previous


def _train_stage(st, base: str, previous: Path | None, stage: Stage, texts: list[str],
                 precision: str, log, max_tokens: int = MAX_TOKENS) -> Path:
    """Train one corpus stage from ``previous`` (or a fresh ``base``) and publish it as ``st``."""
    tok = tiny_tokenizer()
    examples = [tok(t, add_special_tokens=False, truncation=True, max_length=max_tokens).input_ids
                for t in texts]
    if previous is None:
        model = build_tiny(base, seed=0)
    else:
        model = AutoModelForCausalLM.from_pretrained(previous, dtype=torch.float32)

    config = TrainConfig(lr=STAGE_LR, batch_size=STAGE_BATCH, micro_batch_size=None,
                         max_steps=stage.steps, scheduler="cosine", warmup_ratio=0.05, seed=0,
                         checkpoint_every=100, mixed_precision=precision)
    result = train_lm(model, examples, tok.pad_token_id, config, checkpoint_dir=st.progress,
                      description=f"tiny {base} +{stage}")
    if log is not None:
        log({"stage": "tiny-pretrain", "model": base, "corpus": str(stage), "steps": result.steps,
             "final_loss": result.final_loss, "elapsed_s": round(result.elapsed_s, 2)})
    model.config.pad_token_id = tok.pad_token_id

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    return st.publish(save, meta={"base": base, "stage": str(stage)})


def build(name: str, log=None) -> Path:
    """The builder :mod:`w2s.models.builders` calls for ``tiny:<location>`` names with stages."""
    return pretrained_path(name.removeprefix("tiny:"), log)


register_builder(PATTERN, build, provider=__name__)
