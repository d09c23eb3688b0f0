"""The plan of a ``w2s wspo`` run: everything resolved before any weights load.

:func:`make_plan` turns a config into a :class:`Plan`: models resolved, data loaded and encoded with
each model's tokenizer, the token-level tokenizer check done, and the cache key of every stage
computed. Every refusal happens here, before a run directory exists; ``--dry-run`` prints the plan
(:func:`render_plan`) and stops. The stages themselves run in :mod:`w2s.methods.wspo.experiment`.

What is cached, and under what key (``plan.inputs[stage]`` holds the kind and parts that
:func:`w2s.runs.cached_stage` hashes, ``plan.keys[stage]`` the key they give):

===================  ===========================================================================
stage                key (besides a format version)
===================  ===========================================================================
weak DPO             weak model identity, training rows, beta, mode, LoRA, train settings,
                     prompt format, dtype
weak log-ratios      weak and weak-aligned identities, the weak token ids of every training
                     example (so the data, the template and the tokenizer), dtype
strong reference     strong identity, the strong token ids, dtype
strong, before       strong identity, evaluation prompts, sampling settings, prompt format, dtype
WSPO (no entry)      the keys of the weak log-ratios and the reference, gamma, granularity, mode,
                     LoRA, train settings, dtype: names the training's in-progress checkpoints
===================  ===========================================================================

A model's identity is its resolved source and location plus what pins its weights: the hub
revision in the local cache, the file sizes and times of a local folder, the corpus version of a
tiny model, the cache key of a weak model this pipeline aligned. Entries also store the identity
they were made from and are checked on reading: an entry that does not match (copied around, or
corrupt) is a one-line error naming it, never silently used.

This module imports no torch (the models layer is imported inside the functions that need it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from w2s.errors import W2SError
from w2s.methods.wspo.config import WSPOConfig, sampling, stage_train_config, validate
from w2s.runs import Cache, content_hash

VERSION = 1
"""Bump to invalidate every WSPO cache entry (a change in how an entry is computed)."""

STAGES = ("weak_dpo", "weak_ratios", "strong_reference", "before", "strong_train")
"""The cached stages, in the order they run (``plan.keys`` has one key, or None, for each)."""


# --------------------------------------------------------------------------------------------
# identities and hashes


def tokens_hash(items) -> str:
    """sha256 of every encoded example's token ids and response start (16 hex chars)."""
    h = hashlib.sha256()
    for e in items:
        h.update(np.asarray(e.input_ids, dtype=np.int64).tobytes())
        h.update(np.asarray([e.start, len(e.input_ids)], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _rows_hash(rows) -> str:
    return content_hash(rows, 16)


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
    keys: dict[str, str | None] = field(default_factory=dict)   # stage -> cache key (STAGES)
    inputs: dict[str, tuple[str, dict]] = field(default_factory=dict)  # stage -> (kind, parts)
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


def make_plan(cfg: WSPOConfig, *, dry: bool = False) -> Plan:
    """Validate ``cfg`` and resolve everything the run needs, loading no weights.

    Raises a one-line :class:`W2SError` for bad settings, unknown models, a task that is not a
    preference task, empty responses, a weak-aligned model that is the weak model itself, and,
    at token level, weak and strong tokenizers that encode an example differently. A weak model
    larger than the strong one is a warning. With ``dry``, data or tokenizers that cannot be had
    here (a hub dataset that is not cached while offline) are recorded in ``plan.unknown``
    instead of refused.
    """
    import w2s.tiny  # noqa: F401  (registers the builder of tiny:...+<stage> model names)
    from w2s.models import pick_dtype, resolve_model
    from w2s.models.resolve import check_available, model_identity

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
                check_available(role, resolved)
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



def _check_judge_available(judge: str, dry: bool, plan: Plan) -> None:
    """Fail before training on a judge that cannot work at the end (a missing package, a model
    judge that is not available offline)."""
    from w2s.evaluation.judges import parse_judge
    from w2s.models import resolve_model
    from w2s.models.resolve import check_available, model_identity

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
            check_available("judge", resolved)


def _load_data(plan: Plan) -> None:
    """Training pairs (``n_train``, seeded) and held-out prompts (``n_eval`` from the test split)."""
    from w2s.data import load_task
    from w2s.data.core import TaskData, as_prompts, sample_rows
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
    plan.eval_rows = sample_rows(prompts.rows, k)
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


def _keys(plan: Plan) -> Plan:
    """The cache key of every stage whose inputs are known (None where one is not: a dry run
    without the data). ``plan.inputs[stage]`` keeps the ``(kind, parts)`` behind each key, which
    the pipeline hands to :func:`~w2s.runs.cached_stage`: what the dry run shows is what runs."""
    cfg = plan.cfg
    cache = Cache()
    lora = [cfg.lora_r, cfg.lora_alpha] if cfg.mode == "lora" else None
    fmt = {**plan.encode_options, "prompt_format": plan.prompt_format}
    ids = plan.identities
    keys: dict[str, str | None] = dict.fromkeys(STAGES)

    def add(stage: str, kind: str, **parts: Any) -> None:
        plan.inputs[stage] = (kind, parts)
        keys[stage] = cache.key(kind, **parts)

    if plan.train is not None and plan.weak_aligned is None:
        add("weak_dpo", "wspo-weak-dpo", model=ids["weak"], rows=plan.train.fingerprint(),
            beta=cfg.beta, mode=cfg.mode, lora=lora,
            train=dataclasses.asdict(stage_train_config(cfg.weak_dpo, cfg.seed)), format=fmt,
            dtype=plan.dtype, version=VERSION)
    aligned = ({"weak_dpo": keys["weak_dpo"]} if plan.weak_aligned is None
               else ids["weak_aligned"])
    if plan.weak_items is not None and (plan.weak_aligned is not None or keys["weak_dpo"]):
        add("weak_ratios", "wspo-weak-ratios", weak=ids["weak"], weak_aligned=aligned,
            tokens=tokens_hash(plan.weak_items), dtype=plan.dtype, version=VERSION)
    if plan.strong_items is not None:
        add("strong_reference", "wspo-strong-reference", strong=ids["strong"],
            tokens=tokens_hash(plan.strong_items), dtype=plan.dtype, version=VERSION)
    if plan.eval_rows is not None:
        add("before", "wspo-generations", model=ids["strong"], prompts=_rows_hash(plan.eval_rows),
            sampling=dataclasses.asdict(sampling(cfg)), format=fmt, dtype=plan.dtype,
            version=VERSION)
    if keys["weak_ratios"] and keys["strong_reference"]:
        add("strong_train", "wspo-strong", strong=ids["strong"], weak_ratios=keys["weak_ratios"],
            reference=keys["strong_reference"], gamma=cfg.gamma, granularity=cfg.granularity,
            mode=cfg.mode, lora=lora,
            train=dataclasses.asdict(stage_train_config(cfg.strong_train, cfg.seed)),
            dtype=plan.dtype, version=VERSION)
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
    found = read_checkpoint(Cache().progress(key))
    return f" (resumes at step {found[1]['step']})" if found else ""
