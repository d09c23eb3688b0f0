"""The stages of ``w2s wspo`` (see :mod:`w2s.methods.wspo` for the method).

:func:`make_plan` turns a config into a :class:`Plan` without loading any weights: models resolved,
data loaded and encoded with each model's tokenizer, the token-level tokenizer check done, and the
cache key of every stage computed. Every refusal happens there, before a run directory exists;
``--dry-run`` prints the plan (:func:`render_plan`) and stops.

:class:`Pipeline` then runs the stages, one method each. What is cached, and under what key:

===================  ===========================================================================
stage                key (besides a format version)
===================  ===========================================================================
weak DPO             weak model identity, training rows, beta, mode, LoRA, train settings,
                     prompt format, dtype
weak log-ratios      weak and weak-aligned identities, the weak token ids of every training
                     example (so the data, the template and the tokenizer), dtype
strong reference     strong identity, the strong token ids, dtype
strong, before       strong identity, evaluation prompts, sampling settings, prompt format, dtype
===================  ===========================================================================

A model's identity is its resolved source and location plus what pins its weights: the hub
revision in the local cache, the file sizes and times of a local folder, the corpus version of a
tiny model, the cache key of a weak model this pipeline aligned. Entries also store the identity
they were made from and are checked on reading: an entry that does not match (copied around, or
corrupt) is a one-line error naming it, never silently used.

The strong WSPO training itself checkpoints to ``<cache>/inprogress/<key>`` (the key covers
everything the training depends on), so rerunning a killed command resumes it; the checkpoint is
removed once the run has finished.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import w2s.tiny  # noqa: F401  (registers the builder of tiny:...+<stage> model names)
from w2s.errors import W2SError
from w2s.methods.wspo import SPEC
from w2s.methods.wspo.config import (
    WSPOConfig,
    config_summary,
    sampling,
    stage_train_config,
    validate,
)
from w2s.models.resolve import model_identity
from w2s.runs import Cache

VERSION = 1
"""Bump to invalidate every WSPO cache entry (a change in how an entry is computed)."""


# --------------------------------------------------------------------------------------------
# identities and hashes


def tokens_hash(items) -> str:
    """sha256 of every encoded example's token ids and response start (16 hex chars)."""
    h = hashlib.sha256()
    for e in items:
        h.update(np.asarray(e.input_ids, dtype=np.int64).tobytes())
        h.update(np.asarray([e.start, len(e.input_ids)], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def scored_count(item) -> int:
    """Response tokens the log-prob helper scores: all of them, except a first token that has no
    context (a response starting at position 0)."""
    return len(item.input_ids) - max(item.start, 1)


# --------------------------------------------------------------------------------------------
# the plan


@dataclass
class Plan:
    """Everything the pipeline needs, resolved without loading weights."""

    cfg: WSPOConfig
    weak: Any                       # ResolvedModel of pi_w_ref
    strong: Any                     # ResolvedModel of pi_ref / pi_theta
    weak_aligned: Any = None        # ResolvedModel of pi_w_r, or None (DPO-aligned here)
    dtype: str = "float32"
    train: Any = None               # TaskData of preference rows, or None (dry run: unknown)
    eval_rows: list[dict] | None = None   # {id, prompt}: held-out prompts, each samples_per_prompt
    #                                       times (ids <id>#<k>)
    prompt_format: str = "plain"    # plain | hh
    weak_items: list | None = None  # Encoded (prompt, chosen) with the weak tokenizer
    strong_items: list | None = None
    pad: dict[str, int] = field(default_factory=dict)
    identities: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)  # dry run: what could not be resolved

    @property
    def encode_options(self) -> dict[str, Any]:
        """How prompt and response become tokens (:func:`w2s.train.preference.encode`)."""
        hh = self.prompt_format == "hh"
        return {"max_len": self.cfg.max_len, "chat": self.cfg.chat and not hh,
                "sep": " " if hh else ""}

    def cached(self, stage: str) -> bool | None:
        key = self.keys.get(stage)
        return None if key is None else Cache().get(key) is not None

    def summary(self) -> dict[str, Any]:
        """The plan as data (what a dry run returns)."""
        return {"dry_run": True, "models": self.identities, "dtype": self.dtype,
                "n_train": len(self.train) if self.train is not None else None,
                "n_eval": len(self.eval_rows) if self.eval_rows is not None else None,
                "keys": self.keys,
                "cached": {k: self.cached(k) for k in self.keys if k != "strong_train"},
                "unknown": self.unknown, "notes": self.notes}

    def environment(self) -> dict[str, Any]:
        """What env.json records beside the machine: model identities, data hashes, keys."""
        return {"models": self.identities, "dtype": self.dtype,
                "data": {"task": self.cfg.task, "train": self.train.fingerprint(),
                         "eval": _rows_hash(self.eval_rows), "n_train": len(self.train),
                         "n_eval": len(self.eval_rows), "prompt_format": self.prompt_format},
                "cache_keys": self.keys}


def _rows_hash(rows) -> str:
    from w2s.runs import content_hash

    return content_hash(rows, 16)


def make_plan(cfg: WSPOConfig, *, dry: bool = False) -> Plan:
    """Validate ``cfg`` and resolve everything the run needs, loading no weights.

    Raises a one-line :class:`W2SError` for bad settings, unknown models, a task that is not a
    preference task, empty responses, a weak-aligned model that is the weak model itself, and,
    at token level, weak and strong tokenizers that encode an example differently. A weak model
    larger than the strong one is a warning. With ``dry``, data or tokenizers that cannot be had
    here (a hub dataset that is not cached while offline) are recorded in ``plan.unknown``
    instead of refused.
    """
    from w2s.models import pick_dtype, resolve_model

    validate(cfg)
    weak, strong = resolve_model(cfg.weak), resolve_model(cfg.strong)
    aligned = resolve_model(cfg.weak_aligned) if cfg.weak_aligned else None
    if aligned is not None and (aligned.source, aligned.location) == (weak.source, weak.location):
        raise W2SError(f"--weak-aligned {cfg.weak_aligned} is the weak model itself: its "
                       "log-ratios would all be 0; pass the weak model after alignment, or leave "
                       "--weak-aligned out to align --weak by DPO here")
    plan = Plan(cfg, weak, strong, aligned, dtype=str(pick_dtype(cfg.dtype)).removeprefix("torch."))
    if weak.size_b is not None and strong.size_b is not None and weak.size_b > strong.size_b:
        note = (f"the weak model {cfg.weak} ({weak.size_b:.3g}B) is larger than the strong model "
                f"{cfg.strong} ({strong.size_b:.3g}B): this is strong-to-weak, not weak-to-strong")
        warnings.warn(note, UserWarning, stacklevel=3)
        plan.notes.append(note)
    if not dry:
        for role, resolved in (("weak", weak), ("strong", strong), ("weak aligned", aligned)):
            if resolved is not None:
                _check_available(role, resolved)
    _check_judge_available(cfg.judge, dry, plan)

    from w2s.data.hub import HUB_TASKS

    if cfg.task in HUB_TASKS:  # known before any data is loaded (the dry run shows it)
        plan.prompt_format = HUB_TASKS[cfg.task].prompt_format
    plan.identities = {"weak": model_identity(weak), "strong": model_identity(strong),
                       "weak_aligned": model_identity(aligned) if aligned else None}
    try:
        _load_data(plan)
    except W2SError as e:
        if not dry:
            raise
        plan.unknown["data"] = str(e)
        return _keys(plan)
    try:
        _encode(plan)
    except W2SError as e:
        if not dry or "tokenize" in str(e):  # a token-level mismatch is refused in a dry run too
            raise
        plan.unknown["tokenizers"] = str(e)
    return _keys(plan)


def _check_available(role: str, resolved) -> None:
    """A hub model that is not in the local cache while offline fails now, not mid-run."""
    from w2s.models.resolve import hub_offline, in_hf_cache

    if resolved.source in ("alias", "hub") and hub_offline() and not in_hf_cache(resolved.location):
        raise W2SError(f"the {role} model '{resolved.name}' ({resolved.location}) is not in the "
                       f"local Hugging Face cache and HF_HUB_OFFLINE=1; download it first "
                       f"(`huggingface-cli download {resolved.location}`) or pass a local folder")


def _check_judge_available(judge: str, dry: bool, plan: Plan) -> None:
    """Fail before training on a judge that cannot work at the end (a missing package, a model
    judge that is not available offline)."""
    from w2s.evaluation.judges import parse_judge
    from w2s.models import resolve_model

    kind, fields = parse_judge(judge)
    if kind in ("vader", "reward"):
        if not dry:
            from w2s.evaluation.judges import build_judge

            build_judge(judge)
        return
    if kind in ("rm", "cls", "llm"):
        resolved = resolve_model(fields["model"])
        if dry:
            plan.identities["judge"] = model_identity(resolved)
        else:
            _check_available("judge", resolved)


def _load_data(plan: Plan) -> None:
    """Training pairs (``n_train``, seeded) and held-out prompts (``n_eval`` from the test split)."""
    from w2s.data import load_task
    from w2s.data.core import TaskData, as_prompts
    from w2s.data.splits import warn_if_small

    cfg = plan.cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test split's size is judged on n_eval below
        train = load_task(cfg.task, split="train", n=None if cfg.single_turn else cfg.n_train,
                          seed=cfg.seed)
        test = load_task(cfg.task, split="test")
    if train.kind != "preference":
        raise W2SError(f"task '{cfg.task}' is a {train.kind} task; wspo needs a preference task "
                       "({prompt, chosen, rejected} rows; `w2s tasks`)")
    if cfg.single_turn:
        def keep(data: TaskData) -> TaskData:
            return TaskData(data.name, data.kind, [r for r in data.rows if _single_turn(r)],
                            {**data.meta, "single_turn": True})

        train, test = keep(train).subset(cfg.n_train, cfg.seed), keep(test)
        if not train.rows:
            raise W2SError(f"task '{cfg.task}' has no single-turn rows; drop --single-turn")
    plan.prompt_format = train.meta.get("prompt_format", "plain")
    plan.train = train
    prompts = as_prompts(test).subset(cfg.n_eval, cfg.seed)
    if not prompts.rows:
        raise W2SError(f"task '{cfg.task}' has no test prompts to evaluate on")
    k = cfg.samples_per_prompt
    plan.eval_rows = [{"id": r["id"] if k == 1 else f"{r['id']}#{s}", "prompt": r["prompt"]}
                      for r in prompts.rows for s in range(k)]
    warn_if_small(len(prompts.rows), "wspo evaluation prompts", stacklevel=4)


def _single_turn(row: dict) -> bool:
    """An Anthropic-HH transcript with exactly one Human turn (any plain prompt counts)."""
    return row["prompt"].count("Human:") <= 1


def _encode(plan: Plan) -> None:
    """Encode (prompt, chosen) with the weak and the strong tokenizer; at token level require
    identical token ids."""
    from w2s.models import load_tokenizer
    from w2s.train.preference import encode

    cfg = plan.cfg
    weak_tok, strong_tok = load_tokenizer(plan.weak), load_tokenizer(plan.strong)
    opts = plan.encode_options
    rows = plan.train.rows
    plan.weak_items = [encode(weak_tok, r["prompt"], r["chosen"], **opts) for r in rows]
    plan.strong_items = [encode(strong_tok, r["prompt"], r["chosen"], **opts) for r in rows]
    from w2s.models import pad_id

    plan.pad = {"weak": pad_id(weak_tok), "strong": pad_id(strong_tok)}
    if cfg.granularity == "token":
        check_same_tokens(plan.weak_items, plan.strong_items, rows, cfg.weak, cfg.strong)




def check_same_tokens(a_items, b_items, rows, a_name: str, b_name: str,
                      what: str = "--granularity token") -> None:
    """Refuse (one line) when two tokenizers encode any example differently."""
    for row, a, b in zip(rows, a_items, b_items, strict=True):
        if a.input_ids == b.input_ids and a.start == b.start:
            continue
        k = next((i for i, (x, y) in enumerate(zip(a.input_ids, b.input_ids, strict=False))
                  if x != y),
                 min(len(a.input_ids), len(b.input_ids)))
        raise W2SError(f"{what} needs {a_name} and {b_name} to tokenize every example "
                       f"identically, and they do not (example {row['id']!r} differs from token "
                       f"{k} on); use --granularity sequence (length-normalised sequence "
                       "log-ratios work across vocabularies) or models that share a tokenizer")


def _lora(cfg: WSPOConfig):
    from w2s.models import LoraSettings

    return LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha) if cfg.mode == "lora" else None


def _keys(plan: Plan) -> Plan:
    """The cache key of every stage whose inputs are known."""
    cfg = plan.cfg
    cache = Cache()
    lora = [cfg.lora_r, cfg.lora_alpha] if cfg.mode == "lora" else None
    fmt = {**plan.encode_options, "prompt_format": plan.prompt_format}
    ids = plan.identities
    keys: dict[str, str | None] = {"weak_dpo": None, "weak_ratios": None,
                                   "strong_reference": None, "before": None,
                                   "strong_train": None}
    if plan.train is not None and plan.weak_aligned is None:
        keys["weak_dpo"] = cache.key(
            "wspo-weak-dpo", model=ids["weak"], rows=plan.train.fingerprint(), beta=cfg.beta,
            mode=cfg.mode, lora=lora, train=dataclasses.asdict(stage_train_config(
                cfg.weak_dpo, cfg.seed)), format=fmt, dtype=plan.dtype, version=VERSION)
    aligned = ({"weak_dpo": keys["weak_dpo"]} if plan.weak_aligned is None
               else ids["weak_aligned"])
    if plan.weak_items is not None and (plan.weak_aligned is not None or keys["weak_dpo"]):
        keys["weak_ratios"] = cache.key(
            "wspo-weak-ratios", weak=ids["weak"], weak_aligned=aligned,
            tokens=tokens_hash(plan.weak_items), dtype=plan.dtype, version=VERSION)
    if plan.strong_items is not None:
        keys["strong_reference"] = cache.key(
            "wspo-strong-reference", strong=ids["strong"], tokens=tokens_hash(plan.strong_items),
            dtype=plan.dtype, version=VERSION)
    if plan.eval_rows is not None:
        keys["before"] = cache.key(
            "wspo-generations", model=ids["strong"], prompts=_rows_hash(plan.eval_rows),
            sampling=dataclasses.asdict(sampling(cfg)), format=fmt, dtype=plan.dtype,
            version=VERSION)
    if keys["weak_ratios"] and keys["strong_reference"]:
        keys["strong_train"] = cache.key(
            "wspo-strong", strong=ids["strong"], weak_ratios=keys["weak_ratios"],
            reference=keys["strong_reference"], gamma=cfg.gamma, granularity=cfg.granularity,
            mode=cfg.mode, lora=lora, train=dataclasses.asdict(stage_train_config(
                cfg.strong_train, cfg.seed)), dtype=plan.dtype, version=VERSION)
    plan.keys = keys
    return plan


# --------------------------------------------------------------------------------------------
# the dry run


def _describe_model(resolved) -> str:
    from w2s.models.resolve import in_hf_cache

    size = f", {resolved.size_b:.3g}B parameters" if resolved.size_b is not None else ""
    tiny = "tiny, pretrained on a project corpus once" if "+" in resolved.location else "tiny"
    where = {"tiny": tiny, "local": "local folder", "offline": "packaged offline"}
    if resolved.source in ("alias", "hub"):
        found = "in the HF cache" if in_hf_cache(resolved.location) else "hub only"
        return f"{resolved.name}: hub id {resolved.location}{size}, {found}"
    return f"{resolved.name}: {where[resolved.source]} {resolved.location}{size}"


def _train_text(stage, n: int | None) -> str:
    length = (f"{stage.max_steps} steps" if stage.max_steps else
              f"{stage.epochs:g} epoch{'' if stage.epochs == 1 else 's'}")
    steps = ""
    if n and not stage.max_steps:
        import math

        steps = f" = {max(1, math.ceil(stage.epochs * math.ceil(n / stage.batch_size)))} steps"
    return (f"lr {stage.lr:g} {stage.scheduler} (warm-up {stage.warmup_ratio:g}), "
            f"{length}{steps}, global batch {stage.batch_size}")


def render_plan(plan: Plan) -> str:
    """The dry run's text: models, data, stages with what is cached, notes."""
    from w2s.data import TASKS

    cfg = plan.cfg
    cached = {k: plan.cached(k) for k in plan.keys}

    def state(stage: str) -> str:
        if cached.get(stage) is None:
            return "cached: unknown (" + (" and ".join(plan.unknown) or "inputs") + \
                " not available here; see notes)"
        return "cached: yes (reused)" if cached[stage] else "cached: no (computed)"

    n = len(plan.train) if plan.train is not None else None
    mode = f"LoRA r {cfg.lora_r}" if cfg.mode == "lora" else "full fine-tuning"
    spec = TASKS.get(cfg.task)
    source = f" (hub {spec.hub_id})" if spec is not None and spec.hub_id else ""
    lines = ["w2s wspo: the plan (dry run: no weights loaded, nothing written)", "", "models",
             f"  weak, before alignment  {_describe_model(plan.weak)}"]
    if plan.weak_aligned is not None:
        lines.append(f"  weak, aligned           {_describe_model(plan.weak_aligned)}")
    else:
        lines.append(f"  weak, aligned           DPO of the weak model on {cfg.task} (stage 1)")
    lines += [f"  strong                  {_describe_model(plan.strong)}",
              f"  dtype {plan.dtype}, {mode}", "", "data",
              f"  task {cfg.task}{source}{', single-turn rows' if cfg.single_turn else ''}: "
              + (f"{n} training pairs (their chosen responses train the strong model), "
                 f"{len(plan.eval_rows) // cfg.samples_per_prompt} held-out test prompts "
                 f"x {cfg.samples_per_prompt} answer(s)" if n is not None else
                 "not loaded here"),
              "  prompts: " + ("Anthropic-HH transcripts, response after a space"
                               if plan.prompt_format == "hh" else
                               "the model's chat template" if cfg.chat else "plain text"),
              "", "stages"]
    if plan.weak_aligned is None:
        lines.append(f"  1. weak DPO (beta {cfg.beta:g}, {mode}, "
                     f"{_train_text(cfg.weak_dpo, n)})   {state('weak_dpo')}")
    else:
        lines.append("  1. weak DPO: skipped, --weak-aligned given")
    lines += [f"  2. weak log-ratios of the {f'{n} ' if n else ''}chosen responses, "
              f"{cfg.granularity} level "
              f"(2 weak forwards each, once)   {state('weak_ratios')}",
              "  3. strong reference log-probs (" + ("adapters disabled" if cfg.mode == "lora"
                                                     else "the initial model")
              + f", once)   {state('strong_reference')}",
              f"  4. strong generations before training ({cfg.max_new_tokens} new tokens, "
              f"T {cfg.temperature:g})   {state('before')}",
              f"  5. WSPO: gamma {cfg.gamma:g}, {cfg.granularity} level, {mode}, "
              f"{_train_text(cfg.strong_train, n)}; one strong forward per example; "
              f"checkpoints every {cfg.strong_train.checkpoint_every or 'epoch'} steps"
              + _resume_text(plan),
              f"  6. strong generations after training; judge {cfg.judge}: win rate vs before"
              + (", gold reward" if not cfg.judge.startswith(("llm:", "api:")) else "")]
    if plan.notes or plan.unknown:
        lines += ["", "notes"] + [f"  {n}" for n in plan.notes] + [
            f"  {k}: {v}" for k, v in plan.unknown.items()]
    return "\n".join(lines)


def _resume_text(plan: Plan) -> str:
    from w2s.train import read_checkpoint

    key = plan.keys.get("strong_train")
    if key is None:
        return ""
    found = read_checkpoint(Cache().root / "inprogress" / key)
    return f" (resumes at step {found[1]['step']})" if found else ""


# --------------------------------------------------------------------------------------------
# cached per-token values


def write_token_values(folder: Path, values: list[torch.Tensor], meta: dict) -> None:
    """Per-item 1-D tensors -> ``values.safetensors`` (flat values + lengths) + ``meta.json``."""
    from safetensors.torch import save_file

    flat = torch.cat(values) if values else torch.zeros(0)
    lengths = torch.tensor([len(v) for v in values], dtype=torch.int64)
    save_file({"values": flat.float().contiguous(), "lengths": lengths},
              str(folder / "values.safetensors"))
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def read_token_values(folder: Path, meta: dict, items) -> list[torch.Tensor]:
    """The values :func:`write_token_values` stored, checked against what they must be: the
    same ``meta`` (models, tokens) and one value per scored token of every item."""
    from safetensors.torch import load_file

    try:
        stored_meta = json.loads((folder / "meta.json").read_text())
        tensors = load_file(str(folder / "values.safetensors"))
        flat, lengths = tensors["values"], tensors["lengths"].tolist()
    except Exception as e:  # any unreadable entry: say which and how to fix it
        raise W2SError(f"cache entry {folder} is unreadable ({type(e).__name__}: {e}); delete it "
                       "and rerun to recompute it") from None
    if stored_meta != json.loads(json.dumps(meta, sort_keys=True)):
        diff = sorted(k for k in set(meta) | set(stored_meta) if stored_meta.get(k) != meta.get(k))
        raise W2SError(f"cache entry {folder} was made from other inputs ({', '.join(diff)} "
                       "differ): it does not belong to these models or data; delete it and "
                       "rerun to recompute it")
    expected = [scored_count(e) for e in items]
    if lengths != expected or flat.numel() != sum(expected):
        raise W2SError(f"cache entry {folder} holds {len(lengths)} rows that do not match the "
                       f"{len(items)} encoded examples; delete it and rerun to recompute it")
    return list(torch.split(flat, lengths))


# --------------------------------------------------------------------------------------------
# the pipeline


class Pipeline:
    """One ``w2s wspo`` run: the stages in order, sharing the cache, accelerator and run record."""

    def __init__(self, plan: Plan):
        from w2s.train import make_accelerator

        self.plan = plan
        self.cfg = plan.cfg
        self.cache = Cache()
        self.run = None  # the Run record, set once the run directory exists
        self.accelerator = make_accelerator(stage_train_config(self.cfg.strong_train,
                                                               self.cfg.seed))
        self.device = self.accelerator.device
        self.main = self.accelerator.is_main_process
        self.stages: dict[str, dict] = {}
        self.weak_summary: dict[str, Any] = {}
        self.last_step: dict[str, Any] = {}

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log(record)

    def _record(self, stage: str, cached: bool, **extra: Any) -> None:
        self.stages[stage] = {"cached": cached, "key": self.plan.keys.get(stage), **extra}
        self.log({"stage": stage, "cached": cached, "cache_key": self.plan.keys.get(stage),
                  **extra})

    def _load(self, source, lora=None):
        from w2s.models import load_causal_lm

        return load_causal_lm(source, dtype=self.plan.dtype, device=self.device, lora=lora,
                              seed=self.cfg.seed)

    def _score(self, source, items, pad: int) -> list[torch.Tensor]:
        """Per-token log-probs of ``items`` under the model at ``source``, loaded for this only
        (and released before returning)."""
        from w2s.train.preference import score_tokens

        model, _ = self._load(source)
        values = score_tokens(model, items, pad, batch_size=self.cfg.score_batch_size)
        del model
        _release()
        return values

    # ---- 1. the weak aligned model -------------------------------------------------------------
    def align_weak(self):
        """pi_w_r: ``--weak-aligned`` as given, else the weak model after DPO on the training
        pairs (cached as a merged save_pretrained folder)."""
        from w2s.models import resolve_model, save_model
        from w2s.train import train_dpo

        plan, cfg = self.plan, self.cfg
        if plan.weak_aligned is not None:
            self.stages["weak_dpo"] = {"cached": None, "skipped": "--weak-aligned given"}
            return plan.weak_aligned
        key = plan.keys["weak_dpo"]
        # processes sharing the cache train it once (they would share its checkpoints)
        with self.cache.claim(key) as found:
            if found is not None:
                self._record("weak_dpo", True)
                return resolve_model(str(found))
            model, tok = self._load(plan.weak, lora=_lora(cfg))
            progress = self.cache.root / "inprogress" / key
            result = train_dpo(model, tok, plan.train.rows, stage_train_config(cfg.weak_dpo, cfg.seed),
                               beta=cfg.beta, ref_batch_size=cfg.score_batch_size,
                               checkpoint_dir=progress, accelerator=self.accelerator,
                               description="weak DPO",
                               log=lambda rec: self.log({"stage": "weak DPO", **rec}),
                               **plan.encode_options)
            if self.main:
                with self.cache.put(key, meta={"model": cfg.weak, "stage": "weak DPO"}) as tmp:
                    save_model(model, tok, tmp)
                    (tmp / "train.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
                shutil.rmtree(progress, ignore_errors=True)
            self.accelerator.wait_for_everyone()
            self._record("weak_dpo", False, steps=result.steps, final_loss=result.final_loss,
                         resumed_from=result.resumed_from)
            del model
            _release()
            return resolve_model(str(self.cache.get(key)))

    # ---- 2. the weak log-ratios ----------------------------------------------------------------
    def weak_log_ratios(self, aligned) -> list[torch.Tensor]:
        """Per-token ``log pi_w_r - log pi_w_ref`` of every training response (weak tokens),
        computed once: two weak forwards per response, then cached."""
        from w2s.models import load_tokenizer
        from w2s.train.preference import encode

        plan, cfg = self.plan, self.cfg
        key = plan.keys["weak_ratios"]
        meta = {"what": "weak log-ratios", "weak": plan.identities["weak"],
                "weak_aligned": (plan.identities["weak_aligned"] or
                                 {"weak_dpo": plan.keys["weak_dpo"]}),
                "tokens": tokens_hash(plan.weak_items), "dtype": plan.dtype, "version": VERSION}
        found = self.cache.get(key)
        if found is not None:
            ratios = read_token_values(found, meta, plan.weak_items)
            self._record("weak_ratios", True)
        else:
            aligned_tok = load_tokenizer(aligned)
            rows = plan.train.rows
            again = [encode(aligned_tok, r["prompt"], r["chosen"], **plan.encode_options)
                     for r in rows]
            check_same_tokens(plan.weak_items, again, rows, cfg.weak,
                              cfg.weak_aligned or "the DPO-aligned weak model",
                              what="the weak log-ratio")
            before = self._score(plan.weak, plan.weak_items, plan.pad["weak"])
            after = self._score(aligned, plan.weak_items, plan.pad["weak"])
            ratios = [a - b for a, b in zip(after, before, strict=True)]
            if self.main:
                with self.cache.put(key, meta={"stage": "weak log-ratios"}) as tmp:
                    write_token_values(tmp, ratios, meta)
            self.accelerator.wait_for_everyone()
            self._record("weak_ratios", False, n=len(ratios))
        per_example = torch.stack([r.mean() for r in ratios])
        self.weak_summary = {"mean_log_ratio_per_token": float(per_example.mean()),
                             "positive_fraction": float((per_example > 0).float().mean())}
        self.log({"stage": "weak_ratios", **self.weak_summary})
        return ratios

    # ---- 3. the strong model and its reference -------------------------------------------------
    def load_strong(self):
        """The strong model to train: LoRA adapters on it, or all its weights."""
        return self._load(self.plan.strong, lora=_lora(self.cfg))

    def strong_reference(self, model) -> list[torch.Tensor]:
        """Per-token ``log pi_ref`` of every training response under the strong model before any
        training (adapters disabled under LoRA); computed once, cached."""
        from w2s.train.preference import score_tokens

        plan = self.plan
        key = plan.keys["strong_reference"]
        meta = {"what": "strong reference log-probs", "strong": plan.identities["strong"],
                "tokens": tokens_hash(plan.strong_items), "dtype": plan.dtype,
                "version": VERSION}
        found = self.cache.get(key)
        if found is not None:
            self._record("strong_reference", True)
            return read_token_values(found, meta, plan.strong_items)
        values = score_tokens(model, plan.strong_items, plan.pad["strong"],
                              batch_size=self.cfg.score_batch_size, reference=True)
        if self.main:
            with self.cache.put(key, meta={"stage": "strong reference"}) as tmp:
                write_token_values(tmp, values, meta)
        self.accelerator.wait_for_everyone()
        self._record("strong_reference", False, n=len(values))
        return values

    # ---- 4 and 6. generations ------------------------------------------------------------------
    def generate(self, model, tokenizer, when: str) -> list[dict]:
        """``{id, prompt, response}`` of the strong model on the held-out prompts; ``when`` is
        ``before`` (cached) or ``after`` training."""
        from w2s.models.generate import generate

        plan, cfg = self.plan, self.cfg
        key = plan.keys["before"] if when == "before" else None
        found = self.cache.get(key) if key else None
        if found is not None:
            rows = [json.loads(line) for line in (found / "generations.jsonl").read_text()
                    .splitlines()]
            if [r["id"] for r in rows] != [r["id"] for r in plan.eval_rows]:
                raise W2SError(f"cache entry {found} holds generations for other prompts; delete "
                               "it and rerun")
            self._record("before", True)
        else:
            hh = plan.prompt_format == "hh"
            location = (plan.strong.location if when == "before"
                        else str(self.run.path / "model") if self.run is not None else None)
            texts = generate(model, tokenizer, [r["prompt"] for r in plan.eval_rows],
                             sampling(cfg), chat=cfg.chat and not hh, backend=self.backend,
                             model_name=location)
            rows = [{"id": r["id"], "prompt": r["prompt"], "response": _clean(t, hh)}
                    for r, t in zip(plan.eval_rows, texts, strict=True)]
            if key and self.main:
                with self.cache.put(key, meta={"stage": "generations before training"}) as tmp:
                    (tmp / "generations.jsonl").write_text(
                        "".join(json.dumps(r) + "\n" for r in rows))
            if key:
                self._record("before", False, n=len(rows))
        if self.run is not None:
            name = "generations.jsonl" if when == "after" else "generations_before.jsonl"
            self.run.write_rows(name, rows)
        return rows

    # ---- 5. WSPO -------------------------------------------------------------------------------
    def train_strong(self, model, weak_ratios: list[torch.Tensor],
                     reference: list[torch.Tensor]):
        """Train the strong model with :func:`w2s.train.losses.wspo_loss`; returns the loop's
        :class:`~w2s.train.TrainResult`. Resumes from ``<cache>/inprogress/<key>``."""
        from w2s.train import train

        plan, cfg = self.plan, self.cfg
        examples = wspo_examples(plan.strong_items, weak_ratios, reference, cfg.granularity)
        progress = self.cache.root / "inprogress" / plan.keys["strong_train"]
        self._progress = progress

        def log(record: dict) -> None:
            self.last_step = record
            self.log({"stage": "wspo", **record})

        result = train(model, examples, loss_fn=wspo_loss_fn(cfg.gamma, cfg.granularity),
                       collate=wspo_collate(plan.pad["strong"], cfg.granularity),
                       config=stage_train_config(cfg.strong_train, cfg.seed),
                       checkpoint_dir=progress, accelerator=self.accelerator,
                       description="wspo", log=log)
        self.log({"stage": "wspo trained", "steps": result.steps,
                  "resumed_from": result.resumed_from, "final_loss": result.final_loss})
        return result

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, after: list[dict], before: list[dict], trained) -> dict[str, Any]:
        """metrics.json: win rate of the trained strong model against itself before training,
        the gold reward of both (reward judges), the weak signal and the training record."""
        from w2s.evaluation import evaluate_winrate

        cfg = self.cfg
        wr = evaluate_winrate(after, before, cfg.judge, run=self.run, cache=True,
                              batch_size=cfg.score_batch_size)
        gold_after, gold_before = wr.get("candidate_reward_mean"), wr.get("baseline_reward_mean")
        record = {k: v for k, v in trained.to_dict().items() if k != "losses"}
        record["first_loss"] = trained.losses[0] if trained.losses else None
        last = self.last_step  # the last logged step (none when training had finished before)
        record["strong_log_ratio"] = last.get("strong_log_ratio")
        record["target_log_ratio"] = last.get("target_log_ratio")
        return {
            **config_summary(cfg),
            "win_rate": wr["win_rate"], "win_rate_se": wr["win_rate_se"],
            "lc_win_rate": wr["lc_win_rate"], "wins": wr["wins"], "ties": wr["ties"],
            "losses": wr["losses"], "n_pairs": wr["n"],
            "n_prompts": len({r["prompt"] for r in self.plan.eval_rows}),
            "gold_reward_mean": gold_after, "gold_reward_mean_before": gold_before,
            "gold_reward": gold_after, "baseline_gold_reward": gold_before,
            "gold_reward_gain": (gold_after - gold_before) if gold_after is not None else None,
            "before": _gen_summary(before, gold_before),
            "after": _gen_summary(after, gold_after),
            "judge_identity": wr["judge"],
            "generation": {"backend": self.backend, "requested_backend": cfg.backend,
                           **dataclasses.asdict(sampling(cfg))},
            "weak_signal": self.weak_summary,
            "n_train": len(self.plan.train),
            "training": record,
            "stages": self.stages,
        }

    @property
    def backend(self) -> str:
        """The generation backend that will run: ``vllm`` only where it can (else a warning
        says why and ``hf`` runs), see :func:`w2s.models.generate.pick_backend`."""
        if not hasattr(self, "_backend"):
            from w2s.models.generate import pick_backend

            self._backend = pick_backend(self.cfg.backend)
            if self._backend == "vllm" and self.plan.strong.source == "tiny":
                warnings.warn("vllm cannot load in-process tiny models; generating with hf",
                              stacklevel=2)
                self._backend = "hf"
        return self._backend

    def save(self, model, tokenizer, force: bool = False):
        """``<run>/model``: the trained strong model, LoRA merged (``--save-model``, or
        ``force`` for the vllm backend, which loads it from there). Returns the model to use
        afterwards (merging LoRA replaces the peft wrapper)."""
        from w2s.models import save_model

        if (self.cfg.save_model or force) and self.run is not None:
            if self.main:
                model = save_model(model, tokenizer, self.run.path / "model")
            self.accelerator.wait_for_everyone()
        return model

    def clean_up(self) -> None:
        """Remove the finished training's checkpoints (the run holds what it produced)."""
        progress = getattr(self, "_progress", None)
        if progress is not None and self.main:
            shutil.rmtree(progress, ignore_errors=True)


def _release() -> None:
    """Give the memory of models that are no longer referenced back (GPU included)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _clean(text: str, hh: bool) -> str:
    """A generated reply: an HH continuation is cut where the model starts the next turn."""
    if hh:
        text = text.split("\n\nHuman:")[0]
    return text.strip()


def _gen_summary(rows: list[dict], gold: float | None) -> dict[str, Any]:
    lengths = [len(r["response"]) for r in rows]
    return {"gold_reward_mean": gold, "mean_length_chars": sum(lengths) / max(1, len(lengths)),
            "empty": sum(1 for r in rows if not r["response"].strip())}


# --------------------------------------------------------------------------------------------
# the WSPO step


def wspo_examples(items, weak_ratios, reference, granularity: str) -> list[dict]:
    """Training examples: the encoded (prompt, chosen response) with its precomputed weak
    log-ratio and strong reference log-probs (per token, or length-normalised per sequence)."""
    out = []
    for item, weak, ref in zip(items, weak_ratios, reference, strict=True):
        if granularity == "token":
            if len(weak) != len(ref):
                raise W2SError("token level: weak and strong score different numbers of tokens; "
                               "use --granularity sequence")
            out.append({"item": item, "weak": weak, "ref": ref})
        else:  # each model normalises by its own token count
            out.append({"item": item, "weak": float(weak.mean()) if len(weak) else 0.0,
                        "ref": float(ref.mean()) if len(ref) else 0.0})
    return out


def wspo_collate(pad_id: int, granularity: str):
    """examples -> a batch of the chosen responses only, with ``weak`` and ``ref`` laid out like
    the policy's per-token log-probs ([B, T-1], token level) or as [B] (sequence level)."""
    from w2s.train.preference import collate, token_values

    def fn(examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate([e["item"] for e in examples], pad_id)
        if granularity == "token":
            batch["weak"] = token_values(batch["response_mask"], [e["weak"] for e in examples])
            batch["ref"] = token_values(batch["response_mask"], [e["ref"] for e in examples])
        else:
            batch["weak"] = torch.tensor([e["weak"] for e in examples], dtype=torch.float32)
            batch["ref"] = torch.tensor([e["ref"] for e in examples], dtype=torch.float32)
        return batch

    return fn


def wspo_loss_fn(gamma: float, granularity: str):
    """``loss_fn(model, batch)`` for the training loop: ONE forward of the policy over the
    chosen responses; the weak log-ratio and the reference come precomputed in the batch.

    Logged besides the loss (per-example means over response tokens): ``strong_log_ratio``,
    ``log pi_theta - log pi_ref``, and ``target_log_ratio``, the weak log-ratio / gamma it is
    driven to.
    """
    from w2s.models.logprobs import response_logprobs
    from w2s.train.losses import wspo_loss

    def fn(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        per_token, summed = response_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                              batch["response_mask"])
        mask = batch["response_mask"][:, 1:].to(per_token.dtype)
        n = mask.sum(-1).clamp_min(1)
        weak, ref = batch["weak"], batch["ref"]
        if granularity == "token":
            losses = wspo_loss(per_token, ref, weak, torch.zeros_like(weak), mask, gamma=gamma)
            strong_ratio = ((per_token - ref) * mask).sum(-1) / n
            weak_ratio = (weak * mask).sum(-1) / n
        else:
            policy = summed / n
            losses = wspo_loss(policy, ref, weak, torch.zeros_like(weak), None, gamma=gamma)
            strong_ratio, weak_ratio = policy - ref, weak
        return {"loss": losses, "strong_log_ratio": strong_ratio.detach(),
                "target_log_ratio": (weak_ratio / gamma).detach()}

    return fn


# --------------------------------------------------------------------------------------------
# the run


def run(cfg: WSPOConfig) -> dict:
    """Run the WSPO experiment in one run directory; returns metrics.json's content.

    With ``dry_run``: print the plan and return it (nothing is loaded or written).
    """

    from w2s.runs import Run

    plan = make_plan(cfg, dry=cfg.dry_run)  # bad input fails here, before any directory exists
    if cfg.dry_run:
        print(render_plan(plan))
        return plan.summary()
    pipe = Pipeline(plan)
    with Run.start(SPEC.name, cfg, headline=SPEC.headline, run_dir=cfg.run_dir, env_extra=plan.environment()) as run:
        pipe.run = run
        for note in plan.notes:
            run.log({"event": "note", "note": note})
        weak_aligned = pipe.align_weak()                     # 1. DPO of the weak model (cached)
        weak_ratios = pipe.weak_log_ratios(weak_aligned)     # 2. once per data set (cached)
        strong, tokenizer = pipe.load_strong()
        reference = pipe.strong_reference(strong)            # 3. log pi_ref, once (cached)
        before = pipe.generate(strong, tokenizer, "before")  # 4. held-out answers (cached)
        trained = pipe.train_strong(strong, weak_ratios, reference)  # 5. WSPO
        if pipe.backend == "vllm":                           # vLLM reads models from disk
            strong = pipe.save(strong, tokenizer, force=True)
        after = pipe.generate(strong, tokenizer, "after")    # 6. answers after training
        run.keep("the answers before and after training (generations*.jsonl; judge them "
                 "with `w2s eval winrate`)")                 # a failing judge loses nothing
        metrics = pipe.evaluate(after, before, trained)
        if pipe.backend != "vllm":
            pipe.save(strong, tokenizer)
        full = run.finish(metrics)
    pipe.clean_up()
    return full
