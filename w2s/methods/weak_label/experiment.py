"""The stages of ``w2s weak-label`` (see :mod:`w2s.methods.weak_label` for the method).

:func:`make_plan` resolves models, data, splits and the judge first (every refusal happens
there, before a run directory exists); :func:`run` then runs the stages, each through
:func:`w2s.runs.cached_stage` under a key of everything that determines it::

    weak_dpo      weak identity, labelled rows, beta, mode, LoRA, train settings, format, dtype
    labels        weak identity, the weak DPO's key, unlabelled rows, beta, format, dtype
    before        strong identity, evaluation prompts, sampling, format, dtype
    strong_weak   strong identity, the weak-labelled training rows and weights, strong beta,
                  mode, LoRA, train settings, the evaluation prompts and sampling, dtype
    strong_gold   the same with the gold-labelled rows

Each strong DPO's entry holds its answers to the evaluation prompts and its training record
(not the model: two trained copies of a 7B model per run would fill the cache).
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import w2s.tiny  # noqa: F401  (registers the builder of tiny:...+<stage> model names)
from w2s.errors import W2SError
from w2s.methods.weak_label import SPEC
from w2s.methods.weak_label.config import WeakLabelConfig, config_summary, sampling, validate
from w2s.methods.weak_label.labels import (
    agreement,
    agreement_by_bin,
    gap_recovered,
    implicit_reward,
    label_pairs,
)
from w2s.models.loading import release_memory
from w2s.runs import Cache, cached_stage, content_hash

VERSION = 1
"""Bump to invalidate every weak-label cache entry."""


@dataclass
class Plan:
    """Everything the stages need, resolved without loading weights."""

    cfg: WeakLabelConfig
    weak: Any
    strong: Any
    identities: dict[str, Any]
    dtype: str
    labelled: list[dict]
    unlabelled: list[dict]
    eval_rows: list[dict]
    prompt_format: str = "plain"
    stages: dict[str, dict] = field(default_factory=dict)

    @property
    def encode_options(self) -> dict[str, Any]:
        hh = self.prompt_format == "hh"
        return {"max_len": self.cfg.max_len, "chat": self.cfg.chat and not hh,
                "sep": " " if hh else ""}

    @property
    def fmt(self) -> dict[str, Any]:
        return {**self.encode_options, "prompt_format": self.prompt_format}


def make_plan(cfg: WeakLabelConfig) -> Plan:
    """Validate ``cfg``, resolve the models and the judge, load the task and cut its train pairs
    into the labelled and the unlabelled split (disjoint, seeded); one-line errors."""
    from w2s.data import load_task
    from w2s.data.core import as_prompts, sample_rows
    from w2s.data.splits import split_rows
    from w2s.evaluation.judges import build_judge, parse_judge
    from w2s.models import pick_dtype, resolve_model
    from w2s.models.resolve import check_available, model_identity

    validate(cfg)
    weak, strong = resolve_model(cfg.weak), resolve_model(cfg.strong)
    for role, resolved in (("weak", weak), ("strong", strong)):
        check_available(role, resolved)
    kind, fields = parse_judge(cfg.judge)
    if kind in ("vader", "reward"):
        build_judge(cfg.judge)
    elif kind in ("rm", "cls", "llm"):
        check_available("judge", resolve_model(fields["model"]))
    train = load_task(cfg.task, split="train", seed=cfg.seed)
    if train.kind != "preference":
        raise W2SError(f"task '{cfg.task}' is a {train.kind} task; weak-label needs a preference "
                       "task ({prompt, chosen, rejected} rows; `w2s tasks`)")
    n_rest = len(train.rows) - cfg.n_labelled
    if n_rest < 1 or (cfg.n_unlabelled is not None and cfg.n_unlabelled > n_rest):
        want = cfg.n_labelled + (cfg.n_unlabelled or 1)
        raise W2SError(f"task '{cfg.task}' has {len(train.rows)} train pairs; --n-labelled "
                       f"{cfg.n_labelled} + --n-unlabelled {cfg.n_unlabelled or 'the rest'} "
                       f"needs {want}: lower them")
    sizes = {"labelled": cfg.n_labelled, "unlabelled": cfg.n_unlabelled or n_rest}
    parts = split_rows(train.rows, sizes, seed=cfg.seed)
    test = load_task(cfg.task, split="test")
    prompts = as_prompts(test).subset(cfg.n_eval, cfg.seed)
    if not prompts.rows:
        raise W2SError(f"task '{cfg.task}' has no test prompts to evaluate on")
    k = cfg.samples_per_prompt
    eval_rows = sample_rows(prompts.rows, k)
    return Plan(cfg, weak, strong, {"weak": model_identity(weak),
                                    "strong": model_identity(strong)},
                str(pick_dtype(cfg.dtype)).removeprefix("torch."), parts["labelled"],
                parts["unlabelled"], eval_rows, train.meta.get("prompt_format", "plain"))



def weak_label_rows(unlabelled: list[dict], labels: list[dict], seed: int) -> list[dict]:
    """Per pair: the seeded presentation order (``y1`` is the gold chosen or not), the weak
    choice, margin and p, and what the strong model trains on (``chosen``/``rejected`` by the
    weak label). ``labels[i]`` holds ``r_1``, ``r_2`` of pair i in that order."""
    out = []
    decided = label_pairs([x["r_1"] for x in labels], [x["r_2"] for x in labels])
    for row, order, lab in zip(unlabelled, presentation(len(unlabelled), seed), decided,
                               strict=True):
        y = (row["chosen"], row["rejected"]) if order == 1 else (row["rejected"], row["chosen"])
        weak_choice = lab["choice"]
        out.append({"id": row["id"], "prompt": row["prompt"], "margin": lab["margin"],
                    "p": lab["p"], "weak_choice": weak_choice, "gold_choice": order,
                    "agree": weak_choice == order,
                    "chosen": y[weak_choice - 1], "rejected": y[2 - weak_choice]})
    return out


def presentation(n: int, seed: int) -> list[int]:
    """Which of the two responses is shown first as y_1: 1 = the gold chosen, 2 = the gold
    rejected (a seeded coin per pair, so a tie, which picks y_1, is not biased toward gold)."""
    rng = random.Random(f"weak-label-order-{seed}")
    return [1 if rng.random() < 0.5 else 2 for _ in range(n)]


class Pipeline:
    """One run's stages, sharing the cache, the accelerator and the run record."""

    def __init__(self, plan: Plan, run):
        from w2s.train import make_accelerator

        self.plan, self.cfg, self.run = plan, plan.cfg, run
        self.cache = Cache()
        self.accelerator = make_accelerator(self.cfg.strong_dpo.train_config(seed=self.cfg.seed))
        self.keys: dict[str, str] = {}

    def _stage(self, name: str, kind: str, **parts: Any):
        self.keys[name] = self.cache.key(kind, **parts)
        return cached_stage(self.cache, kind, name, **parts)

    def _record(self, name: str, cached: bool, **extra: Any) -> None:
        self.plan.stages[name] = {"cached": cached, "key": self.keys.get(name), **extra}
        self.run.log({"stage": name, "cached": cached, **extra})

    def _load(self, source, lora: bool = False):
        from w2s.models import LoraSettings, load_causal_lm

        settings = (LoraSettings(r=self.cfg.lora_r, alpha=self.cfg.lora_alpha)
                    if lora and self.cfg.mode == "lora" else None)
        return load_causal_lm(source, dtype=self.plan.dtype, device=self.accelerator.device,
                              lora=settings, seed=self.cfg.seed)

    def _lora(self):
        return [self.cfg.lora_r, self.cfg.lora_alpha] if self.cfg.mode == "lora" else None

    # ---- 1. the weak model, aligned on the labelled split -------------------------------------
    def align_weak(self):
        from w2s.models import resolve_model, save_model
        from w2s.train import train_dpo

        plan, cfg = self.plan, self.cfg
        train_cfg = cfg.weak_dpo.train_config(seed=cfg.seed)
        with self._stage("weak_dpo", "weak-label-weak-dpo", model=plan.identities["weak"],
                         rows=content_hash(plan.labelled, 16), beta=cfg.beta, mode=cfg.mode,
                         lora=self._lora(), train=dataclasses.asdict(train_cfg), format=plan.fmt,
                         dtype=plan.dtype, version=VERSION) as st:
            if st.done:
                self._record("weak_dpo", True)
            else:
                model, tok = self._load(plan.weak, lora=True)
                result = train_dpo(model, tok, plan.labelled, train_cfg, beta=cfg.beta,
                                   ref_batch_size=cfg.score_batch_size,
                                   checkpoint_dir=st.progress, accelerator=self.accelerator,
                                   description="weak DPO",
                                   log=lambda r: self.run.log({"stage": "weak DPO", **r}),
                                   **plan.encode_options)
                st.publish(lambda folder: save_model(model, tok, folder),
                           meta={"model": cfg.weak, "stage": "weak DPO"})
                self._record("weak_dpo", False, steps=result.steps,
                             final_loss=result.final_loss)
                del model
                release_memory()
        return resolve_model(str(st.path))

    # ---- 2. the weak labels of the unlabelled split -------------------------------------------
    def label(self, aligned) -> list[dict]:
        """``{r_1, r_2}`` per unlabelled pair (the implicit rewards, cached), then the labels."""
        from w2s.models import load_tokenizer, pad_id
        from w2s.train.preference import encode, score_items

        plan, cfg = self.plan, self.cfg
        with self._stage("labels", "weak-label-labels", weak=plan.identities["weak"],
                         aligned=self.keys["weak_dpo"], rows=content_hash(plan.unlabelled, 16),
                         seed=cfg.seed, beta=cfg.beta, format=plan.fmt, dtype=plan.dtype,
                         version=VERSION) as st:
            if st.done:
                rewards = json.loads((st.path / "rewards.json").read_text())
                self._record("labels", True)
            else:
                tok = load_tokenizer(plan.weak)
                order = presentation(len(plan.unlabelled), cfg.seed)
                ys = [(r["chosen"], r["rejected"]) if o == 1 else (r["rejected"], r["chosen"])
                      for r, o in zip(plan.unlabelled, order, strict=True)]
                items = [encode(tok, r["prompt"], y[j], **plan.encode_options)
                         for j in (0, 1) for r, y in zip(plan.unlabelled, ys, strict=True)]
                logp = {}
                for name, source in (("ref", plan.weak), ("aligned", aligned)):
                    model, _ = self._load(source)
                    logp[name] = score_items(model, items, pad_id(tok),
                                             batch_size=cfg.score_batch_size)[0]
                    del model
                    release_memory()
                n = len(plan.unlabelled)
                r = [implicit_reward(a, b, cfg.beta)
                     for a, b in zip(logp["aligned"], logp["ref"], strict=True)]
                rewards = [{"r_1": r[i], "r_2": r[n + i]} for i in range(n)]
                st.publish(lambda folder: (folder / "rewards.json").write_text(
                    json.dumps(rewards) + "\n"), meta={"stage": "weak labels"})
                self._record("labels", False, n=n)
        return weak_label_rows(plan.unlabelled, rewards, cfg.seed)

    # ---- 3. generations of the strong start ---------------------------------------------------
    def before(self) -> list[dict]:
        plan = self.plan
        with self._stage("before", "weak-label-generations", model=plan.identities["strong"],
                         prompts=content_hash(plan.eval_rows, 16),
                         sampling=dataclasses.asdict(sampling(self.cfg)), format=plan.fmt,
                         dtype=plan.dtype, version=VERSION) as st:
            if st.done:
                self._record("before", True)
            else:
                model, tok = self._load(plan.strong)
                rows = self._sample(model, tok)
                st.publish(lambda folder: _write_rows(folder / "generations.jsonl", rows),
                           meta={"stage": "strong before training"})
                self._record("before", False, n=len(rows))
                del model
                release_memory()
        return _read_rows(st.path / "generations.jsonl")

    def _sample(self, model, tok) -> list[dict]:
        from w2s.models.generate import generate

        hh = self.plan.prompt_format == "hh"
        texts = generate(model, tok, [r["prompt"] for r in self.plan.eval_rows],
                         sampling(self.cfg), chat=self.cfg.chat and not hh)
        return [{"id": r["id"], "prompt": r["prompt"],
                 "response": (t.split("\n\nHuman:")[0] if hh else t).strip()}
                for r, t in zip(self.plan.eval_rows, texts, strict=True)]

    # ---- 4 and 5. the strong model by DPO: on weak labels, on gold labels ----------------------
    def train_strong(self, name: str, rows: list[dict], weights: list[float] | None
                     ) -> tuple[list[dict], dict]:
        """DPO of the strong start on ``rows`` (``weights`` per pair or None), then its answers
        to the evaluation prompts; cached (answers and training record)."""
        from w2s.train import train_dpo

        plan, cfg = self.plan, self.cfg
        train_cfg = cfg.strong_dpo.train_config(seed=cfg.seed)
        pairs = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                 for r in rows]
        with self._stage(name, "weak-label-strong-dpo", model=plan.identities["strong"],
                         rows=content_hash(pairs, 16), weights=weights, beta=cfg.strong_beta,
                         mode=cfg.mode, lora=self._lora(), train=dataclasses.asdict(train_cfg),
                         prompts=content_hash(plan.eval_rows, 16),
                         sampling=dataclasses.asdict(sampling(cfg)), format=plan.fmt,
                         dtype=plan.dtype, version=VERSION) as st:
            if st.done:
                self._record(name, True)
            else:
                if not pairs:
                    raise W2SError(f"{name}: no training pairs left (the confidence filter "
                                   f"{cfg.confidence_threshold} keeps none); lower "
                                   "--confidence-threshold")
                model, tok = self._load(plan.strong, lora=True)
                result = train_dpo(model, tok, pairs, train_cfg, beta=cfg.strong_beta,
                                   weights=weights, ref_batch_size=cfg.score_batch_size,
                                   checkpoint_dir=st.progress, accelerator=self.accelerator,
                                   description=name.replace("_", " "),
                                   log=lambda r: self.run.log({"stage": name, **r}),
                                   **plan.encode_options)
                answers = self._sample(model, tok)
                record = {k: v for k, v in result.to_dict().items() if k != "losses"}
                record["first_loss"] = result.losses[0] if result.losses else None

                def write(folder: Path) -> None:
                    _write_rows(folder / "generations.jsonl", answers)
                    (folder / "train.json").write_text(json.dumps(record, indent=1) + "\n")

                st.publish(write, meta={"stage": name})
                self._record(name, False, steps=result.steps, final_loss=result.final_loss)
                del model
                release_memory()
        return (_read_rows(st.path / "generations.jsonl"),
                json.loads((st.path / "train.json").read_text()))


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]



# --------------------------------------------------------------------------------------------
# the figures


def label_summary(labelled: list[dict], n_bins: int) -> dict[str, Any]:
    """Agreement of the weak labels with gold, overall, by confidence bin, and of the kept."""
    agree = [r["agree"] for r in labelled]
    kept = [r for r in labelled if r["kept"]]
    return {"label_agreement": agreement(agree),
            "label_agreement_by_bin": agreement_by_bin([r["p"] for r in labelled], agree,
                                                       n_bins),
            "label_agreement_kept": agreement([r["agree"] for r in kept]),
            "n_unlabelled": len(labelled), "n_kept": len(kept),
            "mean_p": sum(r["p"] for r in labelled) / max(1, len(labelled))}


def strong_figures(judge, weak_ans, gold_ans, before, run) -> dict[str, Any]:
    """Three win rates through :func:`w2s.evaluation.evaluate_winrate`, the gold rewards and
    the gap recovered (on the gold reward, else on the win rate against the start)."""
    from w2s.evaluation import evaluate_winrate

    out: dict[str, Any] = {}
    wr = {}
    for name, cand, base in (("weak_vs_start", weak_ans, before),
                             ("gold_vs_start", gold_ans, before),
                             ("weak_vs_gold", weak_ans, gold_ans)):
        wr[name] = evaluate_winrate(cand, base, judge, run=run, cache=True,
                                    judgments=f"judgments-{name.replace('_', '-')}.jsonl",
                                    log={"comparison": name})
        for key in ("win_rate", "win_rate_se", "wins", "ties", "losses"):
            out[f"{key}_{name}"] = wr[name][key]
    out["win_rate"] = wr["weak_vs_start"]["win_rate"]
    start = wr["weak_vs_start"].get("baseline_reward_mean")
    weak = wr["weak_vs_start"].get("candidate_reward_mean")
    gold = wr["gold_vs_start"].get("candidate_reward_mean")
    out.update(gold_reward_start=start, gold_reward_weak_labelled=weak,
               gold_reward_gold_labelled=gold, gold_reward=weak, baseline_gold_reward=start)
    if start is not None:
        value, reason = gap_recovered(start, weak, gold)
        out["gap_recovered_on"] = "gold reward"
    else:  # a pairwise judge: the start against itself is a 0.5 win rate
        value, reason = gap_recovered(0.5, wr["weak_vs_start"]["win_rate"],
                                      wr["gold_vs_start"]["win_rate"])
        out["gap_recovered_on"] = "win rate against the start (the start counts 0.5)"
    out["gap_recovered"], out["gap_recovered_reason"] = value, reason
    out["judge_identity"] = wr["weak_vs_start"]["judge"]
    return out


# --------------------------------------------------------------------------------------------
# the run


def run(cfg: WeakLabelConfig) -> dict:
    """Run the experiment in one run directory; returns metrics.json's content."""
    from w2s.evaluation.judges import build_judge
    from w2s.runs import Run

    plan = make_plan(cfg)  # bad input fails here, before any directory exists
    env = {"models": plan.identities, "dtype": plan.dtype,
           "data": {"task": cfg.task, "labelled": content_hash(plan.labelled, 16),
                    "unlabelled": content_hash(plan.unlabelled, 16),
                    "eval": content_hash(plan.eval_rows, 16)}}
    with Run.start(SPEC.name, cfg, headline=SPEC.headline, run_dir=cfg.run_dir,
                   env_extra=env) as record:
        pipe = Pipeline(plan, record)
        aligned = pipe.align_weak()                       # 1. weak DPO on the labelled split
        labelled = pipe.label(aligned)                    # 2. weak labels of the unlabelled one
        for r in labelled:
            r["kept"] = r["p"] >= cfg.confidence_threshold
        record.write_rows("weak_labels.jsonl", [
            {k: r[k] for k in ("id", "margin", "p", "weak_choice", "gold_choice", "agree",
                               "kept")} for r in labelled])
        before = pipe.before()                            # 3. the strong start's answers
        kept = [r for r in labelled if r["kept"]]
        weights = [r["p"] for r in kept] if cfg.confidence_weighting else None
        weak_ans, weak_train = pipe.train_strong("strong_weak", kept, weights)   # 4.
        gold_ans, gold_train = pipe.train_strong("strong_gold", plan.unlabelled, None)  # 5.
        for name, rows in (("before", before), ("weak_labelled", weak_ans),
                           ("gold_labelled", gold_ans)):
            record.write_rows(f"generations-{name.replace('_', '-')}.jsonl", rows)
        record.keep("the three models' answers (generations-*.jsonl) and weak_labels.jsonl")
        judge = build_judge(cfg.judge, batch_size=cfg.judge_batch_size)
        metrics = {**config_summary(cfg), **label_summary(labelled, cfg.n_bins),
                   **strong_figures(judge, weak_ans, gold_ans, before, record),
                   "n_labelled": len(plan.labelled), "n_eval": len(plan.eval_rows),
                   "training": {"strong_weak": weak_train, "strong_gold": gold_train},
                   "stages": plan.stages}
        return record.finish(metrics)
