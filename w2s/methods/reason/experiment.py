"""The stages of ``w2s reason`` (see :mod:`w2s.methods.reason` for the method).

:func:`make_plan` resolves the models and cuts the task's train split into train_1 (the weak
supervisor's gold half) and train_2 (the strong model's questions) before any directory exists;
:func:`run` then runs the experiment, every stage through :func:`w2s.runs.cached_stage`::

    weak_sft      the weak supervisor fine-tuned on train_1's gold solutions (sft supervision)
    weak_answers  its greedy solutions to train_2 and to the test problems
    icl_answers   the strong base's in-context solutions to train_2 (weak demonstrations)
    <sft stage>   one strong SFT from the base: round t's weak / icl side, full weak
                  fine-tuning, the gold ceiling; its test answers (and train_2 answers when a
                  next round needs them, and the model when stage II continues from it)
    samples       the stage-I model's temperature samples on train_2
    stage2        DPO / ORPO of the stage-I model on its own contrasts; its test answers

Each key holds everything that determines the stage (models' identities, the rows' content
hashes, the train, sampling and format settings), so a rerun trains and generates nothing and an
interrupted one resumes.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import w2s.tiny  # noqa: F401  (registers the builder of tiny:...+<stage> model names)
from w2s.data.reasoning import question_prompt
from w2s.errors import W2SError
from w2s.evaluation.checking import is_correct
from w2s.methods.reason import SPEC
from w2s.methods.reason.config import (
    ReasonConfig,
    config_summary,
    lora_targets,
    rounds,
    validate,
)
from w2s.methods.reason.scoring import (
    answers,
    build_pairs,
    correctness,
    figures,
    final_answer,
    mean,
    pair_summary,
)
from w2s.methods.reason.selection import consistent, cut_answer, icl_prompt, stage1_rows
from w2s.models.loading import release_memory
from w2s.runs import Cache, cached_stage, content_hash

VERSION = 1
"""Bump to invalidate every reason cache entry."""


@dataclass
class Plan:
    """Everything the stages need, resolved without loading weights."""

    cfg: ReasonConfig
    weak: Any
    strong: Any
    identities: dict[str, Any]
    dtype: str
    weak_train: list[dict]
    w2s: list[dict]
    test: list[dict]
    stages: dict[str, dict] = field(default_factory=dict)

    @property
    def fmt(self) -> dict[str, Any]:
        return {"chat": self.cfg.chat, "max_len": self.cfg.max_len, "template": "question-answer"}


def make_plan(cfg: ReasonConfig) -> Plan:
    """Validate ``cfg``, resolve both models, load the task and split it; one-line errors."""
    from w2s.data import load_task
    from w2s.data.splits import split_rows
    from w2s.models import pick_dtype, resolve_model
    from w2s.models.resolve import check_available, model_identity

    validate(cfg)
    weak, strong = resolve_model(cfg.weak), resolve_model(cfg.strong)
    for role, resolved in (("weak", weak), ("strong", strong)):
        check_available(role, resolved)
    train = load_task(cfg.task, split="train", seed=cfg.seed)
    if train.kind != "reasoning":
        raise W2SError(f"task '{cfg.task}' is a {train.kind} task; reason needs a reasoning task "
                       "({prompt, solution, answer} rows: gsm8k, math, toy-arithmetic, or "
                       "local:PATH#reasoning)")
    n = len(train.rows)
    n_weak = cfg.n_weak_train or n // 2
    n_w2s = cfg.n_w2s or n - n_weak
    if n_weak + n_w2s > n or n_w2s < 2:
        raise W2SError(f"task '{cfg.task}' has {n} train problems; --n-weak-train {n_weak} + "
                       f"--n-w2s {n_w2s} needs {n_weak + n_w2s} (and train_2 at least 2): lower "
                       "them")
    if cfg.icl_shots >= n_w2s:
        raise W2SError(f"--icl-shots {cfg.icl_shots} needs more than {cfg.icl_shots} train_2 "
                       f"problems (there are {n_w2s}); lower --icl-shots")
    if cfg.weak_supervision == "few-shot" and cfg.weak_shots > n_weak:
        raise W2SError(f"--weak-shots {cfg.weak_shots} exceeds train_1's {n_weak} problems; "
                       "lower --weak-shots")
    parts = split_rows(train.rows, {"weak": n_weak, "w2s": n_w2s}, seed=cfg.seed)
    test = load_task(cfg.task, split="test").subset(cfg.n_test, cfg.seed).rows
    if not test:
        raise W2SError(f"task '{cfg.task}' has no test problems")
    return Plan(cfg, weak, strong, {"weak": model_identity(weak),
                                    "strong": model_identity(strong)},
                str(pick_dtype(cfg.dtype)).removeprefix("torch."), parts["weak"], parts["w2s"],
                test)



def demos_for(i: int, pool: int, k: int, seed: int, tag: str) -> list[int]:
    """The ``k`` demonstration indices of problem ``i``: ONE seeded draw of ``k + 1`` indices
    of ``range(pool)``, the same for every problem (the authors' fixed few-shot prompt), the
    first ``k`` of them that are not ``i`` itself (pass ``i=-1`` when the problem is not in the
    pool)."""
    rng = random.Random(f"{tag}-{seed}")
    drawn = rng.sample(range(pool), min(pool, k + 1))
    return [j for j in drawn if j != i][:k]


class Pipeline:
    """One run's stages, sharing the cache, the accelerator and the run record."""

    def __init__(self, plan: Plan, run):
        from w2s.train import make_accelerator

        self.plan, self.cfg, self.run = plan, plan.cfg, run
        self.cache = Cache()
        self.accelerator = make_accelerator(self.cfg.strong_sft.train_config(seed=self.cfg.seed))
        self.keys: dict[str, str] = {}

    # ---- plumbing ------------------------------------------------------------------------------
    def _stage(self, name: str, kind: str, **parts: Any):
        self.keys[name] = self.cache.key(kind, **parts)
        return cached_stage(self.cache, kind, name, **parts)

    def _record(self, name: str, cached: bool, **extra: Any) -> None:
        self.plan.stages[name] = {"cached": cached, "key": self.keys.get(name), **extra}
        self.run.log({"stage": name, "cached": cached, **extra})

    def _lora_settings(self):
        from w2s.models import LoraSettings

        return LoraSettings(r=self.cfg.lora_r, alpha=self.cfg.lora_alpha,
                            targets=lora_targets(self.cfg))

    def _load(self, source, *, train: bool = False, adapter: Path | None = None):
        """``(model, tokenizer)`` of ``source``; with ``adapter`` (a stage-I model kept as a
        LoRA adapter) merged in first; ``train`` adds fresh adapters in lora mode."""
        from w2s.models import apply_lora, load_causal_lm

        lora = self._lora_settings() if train and self.cfg.mode == "lora" else None
        model, tok = load_causal_lm(source, dtype=self.plan.dtype, seed=self.cfg.seed,
                                    device=self.accelerator.device,
                                    lora=lora if adapter is None else None)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
            if lora is not None:
                model = apply_lora(model, lora, seed=self.cfg.seed)
        return model, tok

    def _lora(self):
        cfg = self.cfg
        return [cfg.lora_r, cfg.lora_alpha, cfg.lora_targets] if cfg.mode == "lora" else None

    def _greedy(self):
        from w2s.models.generate import SamplingConfig

        return SamplingConfig(max_new_tokens=self.cfg.max_new_tokens, temperature=0.0,
                              batch_size=self.cfg.gen_batch_size, seed=self.cfg.seed)

    def _solve(self, model, tok, prompts: list[str], sampling=None) -> list[str]:
        from w2s.models.generate import generate

        texts = generate(model, tok, prompts, sampling or self._greedy(), chat=self.cfg.chat)
        return [cut_answer(t) for t in texts]

    def _sft(self, model, tok, rows: list[dict], stage, st, description: str):
        from w2s.train import train_sft

        train_cfg = stage.train_config(seed=self.cfg.seed)
        return train_sft(model, tok, rows, train_cfg, max_len=self.cfg.max_len,
                         chat=self.cfg.chat, sep=" ", checkpoint_dir=st.progress,
                         accelerator=self.accelerator, description=description,
                         log=lambda r: self.run.log({"stage": description, **r}))

    def zero_shot(self, rows: list[dict]) -> list[str]:
        return [question_prompt(r["prompt"]) for r in rows]

    # ---- the weak supervisor -------------------------------------------------------------------
    def weak_model(self):
        """The weak supervisor: fine-tuned on train_1's gold solutions (a cached folder), or the
        weak model as it is (few-shot supervision)."""
        from w2s.models import resolve_model, save_model

        plan, cfg = self.plan, self.cfg
        if cfg.weak_supervision != "sft":
            return plan.weak
        rows = [{"prompt": question_prompt(r["prompt"]), "response": r["solution"]}
                for r in plan.weak_train]
        with self._stage("weak_sft", "reason-weak-sft", model=plan.identities["weak"],
                         rows=content_hash(rows, 16), mode=cfg.mode, lora=self._lora(),
                         train=dataclasses.asdict(cfg.weak_sft.train_config(seed=cfg.seed)),
                         format=plan.fmt, dtype=plan.dtype, version=VERSION) as st:
            if st.done:
                self._record("weak_sft", True)
            else:
                model, tok = self._load(plan.weak, train=True)
                result = self._sft(model, tok, rows, cfg.weak_sft, st, "weak SFT")
                st.publish(lambda folder: save_model(model, tok, folder),
                           meta={"model": cfg.weak, "stage": "weak SFT on train_1"})
                self._record("weak_sft", False, steps=result.steps, final_loss=result.final_loss)
                del model
                release_memory()
        return resolve_model(str(st.path))

    def weak_prompts(self, rows: list[dict]) -> list[str]:
        """Prompts of the weak supervisor: zero-shot after SFT (or without it, ``zero-shot``),
        else few-shot with train_1's gold solutions."""
        plan, cfg = self.plan, self.cfg
        if cfg.weak_supervision != "few-shot":
            return self.zero_shot(rows)
        pool = plan.weak_train
        return [icl_prompt([(question_prompt(pool[j]["prompt"]), pool[j]["solution"])
                            for j in demos_for(-1, len(pool), cfg.weak_shots, cfg.seed, "weak")],
                           question_prompt(r["prompt"])) for r in rows]

    def answers(self, name: str, source, prompts: dict[str, list[str]], what: str
                ) -> dict[str, list[str]]:
        """Greedy solutions of ``source`` to each list of ``prompts`` (``{split: prompts}``),
        one cache entry keyed by the model, the prompts and the sampling."""
        from w2s.models.resolve import model_identity

        plan = self.plan
        with self._stage(name, "reason-answers", model=model_identity(source),
                         prompts=content_hash(prompts, 16),
                         sampling=dataclasses.asdict(self._greedy()), format=plan.fmt,
                         dtype=plan.dtype, version=VERSION) as st:
            if st.done:
                self._record(name, True)
            else:
                model, tok = self._load(source)
                out = {k: self._solve(model, tok, v) for k, v in prompts.items()}
                st.publish(lambda folder: _write_json(folder / "answers.json", out),
                           meta={"stage": what})
                self._record(name, False, n=sum(len(v) for v in out.values()))
                del model
                release_memory()
        return _read_json(st.path / "answers.json")

    def weak_answers(self, weak) -> dict[str, list[str]]:
        """The weak supervisor's greedy solutions: ``{"w2s": [...], "test": [...]}``."""
        plan = self.plan
        return self.answers("weak_answers", weak, {"w2s": self.weak_prompts(plan.w2s),
                                                   "test": self.weak_prompts(plan.test)},
                            "weak solutions")

    # ---- the strong model in context -----------------------------------------------------------
    def icl_answers(self, weak_w2s: list[str]) -> list[str]:
        """The strong base's greedy solutions to train_2, each prompted with ``icl_shots`` weak
        solutions of train_2 problems (:func:`demos_for`; no gold anywhere)."""
        plan, cfg = self.plan, self.cfg
        n = len(plan.w2s)
        prompts = [icl_prompt([(question_prompt(plan.w2s[j]["prompt"]), weak_w2s[j])
                               for j in demos_for(i, n, cfg.icl_shots, cfg.seed, "icl")],
                              question_prompt(r["prompt"])) for i, r in enumerate(plan.w2s)]
        return self.answers("icl_answers", plan.strong, {"w2s": prompts},
                            "strong in-context solutions")["w2s"]

    def base_answers(self) -> list[str]:
        """The strong base's zero-shot greedy solutions to the test problems (a reference: how
        much of the skill it shows before any training)."""
        return self.answers("strong_base", self.plan.strong,
                            {"test": self.zero_shot(self.plan.test)},
                            "strong base, zero-shot")["test"]

    # ---- one strong SFT from the base ----------------------------------------------------------
    def strong_sft(self, name: str, rows: list[dict], *, train2: bool = False,
                   keep_model: bool = False) -> dict[str, Any]:
        """SFT of the strong base on ``rows`` ({prompt: question, response: solution}); returns
        ``{"test": [...], "w2s": [...] (train2), "model": Path (keep_model), "train": {...}}``."""
        from w2s.models import save_model

        plan, cfg = self.plan, self.cfg
        train_rows = [{"prompt": question_prompt(r["prompt"]), "response": r["response"]}
                      for r in rows]
        with self._stage(name, "reason-strong-sft", model=plan.identities["strong"],
                         rows=content_hash(train_rows, 16), mode=cfg.mode, lora=self._lora(),
                         train=dataclasses.asdict(cfg.strong_sft.train_config(seed=cfg.seed)),
                         test=content_hash(plan.test, 16),
                         w2s=content_hash(plan.w2s, 16) if train2 else None,
                         keep_model=keep_model, sampling=dataclasses.asdict(self._greedy()),
                         format=plan.fmt, dtype=plan.dtype, version=VERSION) as st:
            if st.done:
                self._record(name, True)
            else:
                if not train_rows:
                    raise W2SError(f"{name}: no training problems (the final answers of the "
                                   "two sources agree on none); use more train_2 problems, "
                                   "--selection all, or a stronger supervisor")
                model, tok = self._load(plan.strong, train=True)
                result = self._sft(model, tok, train_rows, cfg.strong_sft, st,
                                   name.replace("_", " "))
                out = {"test": self._solve(model, tok, self.zero_shot(plan.test))}
                if train2:
                    out["w2s"] = self._solve(model, tok, self.zero_shot(plan.w2s))
                record = {"steps": result.steps, "final_loss": result.final_loss,
                          "n_rows": len(train_rows)}

                def write(folder: Path) -> None:
                    _write_json(folder / "answers.json", out)
                    _write_json(folder / "train.json", record)
                    if keep_model:  # an adapter alone in lora mode: a 70B copy is not kept
                        save_model(model, tok, folder / "model", merge_lora=False)

                st.publish(write, meta={"stage": name})
                self._record(name, False, steps=result.steps, final_loss=result.final_loss,
                             n_rows=len(train_rows))
                del model
                release_memory()
        out = _read_json(st.path / "answers.json")
        out["train"] = _read_json(st.path / "train.json")
        if keep_model:
            out["model"] = st.path / "model"
        return out

    def _from_stage1(self, folder: Path, train: bool = False):
        if self.cfg.mode == "lora":
            return self._load(self.plan.strong, train=train, adapter=folder)
        from w2s.models import resolve_model

        return self._load(resolve_model(str(folder)), train=train)

    # ---- stage II ------------------------------------------------------------------------------
    def samples(self, stage1: dict) -> list[list[str]]:
        """``n_samples`` temperature samples of the stage-I model per train_2 problem."""
        from w2s.models.generate import SamplingConfig

        plan, cfg = self.plan, self.cfg
        sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.sample_temperature,
                                  batch_size=cfg.gen_batch_size, seed=cfg.seed)
        k = cfg.n_samples
        prompts = [p for p in self.zero_shot(plan.w2s) for _ in range(k)]
        with self._stage("samples", "reason-samples", stage1=self.keys["stage1_final"],
                         prompts=content_hash(prompts, 16), n=k,
                         sampling=dataclasses.asdict(sampling), format=plan.fmt,
                         version=VERSION) as st:
            if st.done:
                self._record("samples", True)
            else:
                model, tok = self._from_stage1(stage1["model"])
                flat = self._solve(model, tok, prompts, sampling)
                out = {"samples": [flat[i * k:(i + 1) * k] for i in range(len(plan.w2s))]}
                st.publish(lambda folder: _write_json(folder / "samples.json", out),
                           meta={"stage": "stage-I samples"})
                self._record("samples", False, n=len(flat))
                del model
                release_memory()
        return _read_json(st.path / "samples.json")["samples"]

    def stage2(self, stage1: dict, pairs: list[dict]) -> dict[str, Any]:
        """DPO / ORPO of the stage-I model on ``pairs``; its test answers and training record."""
        from w2s.train import train_dpo

        plan, cfg = self.plan, self.cfg
        rows = [{"prompt": question_prompt(p["prompt"]), "chosen": p["chosen"],
                 "rejected": p["rejected"]} for p in pairs]
        train_cfg = cfg.pref.train_config(seed=cfg.seed)
        with self._stage("stage2", "reason-stage2", stage1=self.keys["stage1_final"],
                         rows=content_hash(rows, 16), objective=cfg.stage2, beta=cfg.beta,
                         mode=cfg.mode, lora=self._lora(), train=dataclasses.asdict(train_cfg),
                         test=content_hash(plan.test, 16),
                         sampling=dataclasses.asdict(self._greedy()), format=plan.fmt,
                         dtype=plan.dtype, version=VERSION) as st:
            if st.done:
                self._record("stage2", True)
            else:
                if not rows:
                    raise W2SError("stage II: no contrastive pairs (no problem's majority "
                                   f"answer reaches --min-confidence {cfg.min_confidence} with "
                                   "a disagreeing sample); lower --min-confidence, raise "
                                   "--n-samples, or --stage2 none")
                model, tok = self._from_stage1(stage1["model"], train=True)
                result = train_dpo(model, tok, rows, train_cfg, objective=cfg.stage2,
                                   beta=cfg.beta, max_len=cfg.max_len, chat=cfg.chat, sep=" ",
                                   ref_batch_size=cfg.score_batch_size,
                                   checkpoint_dir=st.progress, accelerator=self.accelerator,
                                   description=f"stage II {cfg.stage2}",
                                   log=lambda r: self.run.log({"stage": "stage2", **r}))
                out = {"test": self._solve(model, tok, self.zero_shot(plan.test))}
                record = {"steps": result.steps, "final_loss": result.final_loss,
                          "n_rows": len(rows)}

                def write(folder: Path) -> None:
                    _write_json(folder / "answers.json", out)
                    _write_json(folder / "train.json", record)

                st.publish(write, meta={"stage": "stage II"})
                self._record("stage2", False, steps=result.steps, final_loss=result.final_loss,
                             n_rows=len(rows))
                del model
                release_memory()
        out = _read_json(st.path / "answers.json")
        out["train"] = _read_json(st.path / "train.json")
        return out


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj) + "\n")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())



# --------------------------------------------------------------------------------------------
# the experiment


def stage_one(pipe: Pipeline, weak_w2s: list[str], icl_w2s: list[str]
              ) -> tuple[dict[str, Any], list[dict], dict[str, dict]]:
    """Stage I: ``rounds(cfg)`` rounds of consistency-selected SFT, each from the strong base.

    Round 1 compares the weak solutions with the strong model's in-context ones; round t+1 the
    solutions of round t's two models (one trained on the weak side, one on the in-context
    side). The last round trains the ``stage1_data`` side only (kept as a model when stage II
    follows). Returns the final model's outputs, the per-round data figures and every model's
    test answers by name.
    """
    plan, cfg = pipe.plan, pipe.cfg
    gold = plan.w2s
    sources = {"weak": weak_w2s, "icl": icl_w2s}
    data_log, tested = [], {}
    final: dict[str, Any] = {}
    n_rounds = rounds(cfg)
    for t in range(1, n_rounds + 1):
        last = t == n_rounds
        if cfg.selection == "all":
            keep, sides = list(range(len(gold))), ["weak"]
            data = {"weak": stage1_rows(gold, keep, sources["weak"], sources["icl"], "weak")}
        else:
            keep = consistent(answers(sources["weak"]), answers(sources["icl"]))
            sides = [cfg.stage1_data] if last else ["weak", "icl"]
            data = {s: stage1_rows(gold, keep, sources["weak"], sources["icl"], s) for s in sides}
        kept_weak = correctness([sources["weak"][i] for i in keep], [gold[i] for i in keep])
        data_log.append({"round": t, "n_kept": len(keep), "n_problems": len(gold),
                         "kept_fraction": len(keep) / len(gold),
                         "kept_accuracy": (sum(kept_weak) / len(keep)) if keep else None,
                         "weak_side_accuracy": mean(correctness(sources["weak"], gold)),
                         "icl_side_accuracy": mean(correctness(sources["icl"], gold))})
        pipe.run.log({"stage": f"stage I round {t}", **data_log[-1]})
        next_sources = {}
        for side in sides:
            name = f"stage1_r{t}_{side}"
            keep_model = last and cfg.stage2 != "none"
            out = pipe.strong_sft(name, data[side], train2=not last, keep_model=keep_model)
            tested[name] = out["test"]
            if last:
                pipe.keys["stage1_final"] = pipe.keys[name]
                final = {**out, "name": name}
            else:
                next_sources[side] = out["w2s"]
        if not last:
            sources = next_sources
    return final, data_log, tested


def icl_figure(cfg: ReasonConfig, correct: list[bool]) -> dict[str, Any]:
    """``icl_train2_acc``, the strong base's in-context accuracy on train_2; null with the
    reason under ``--selection all``, which asks the strong model nothing in context."""
    if cfg.selection == "all":
        return {"icl_train2_acc": None,
                "icl_train2_acc_reason": "--selection all: no in-context answers"}
    return {"icl_train2_acc": mean(correct)}


def run(cfg: ReasonConfig) -> dict:
    """Run the experiment in one run directory; returns metrics.json's content."""
    from w2s.runs import Run

    plan = make_plan(cfg)  # bad input fails here, before any directory exists
    env = {"models": plan.identities, "dtype": plan.dtype,
           "data": {"task": cfg.task, "train_1": content_hash(plan.weak_train, 16),
                    "train_2": content_hash(plan.w2s, 16), "test": content_hash(plan.test, 16)}}
    with Run.start(SPEC.name, cfg, headline=SPEC.headline, run_dir=cfg.run_dir,
                   env_extra=env) as record:
        pipe = Pipeline(plan, record)
        weak = pipe.weak_model()                                   # the weak supervisor
        weak_out = pipe.weak_answers(weak)                         # its solutions
        icl = (pipe.icl_answers(weak_out["w2s"]) if cfg.selection == "consistency"
               else weak_out["w2s"])                               # strong, in context
        final, data_log, tested = stage_one(pipe, weak_out["w2s"], icl)        # stage I
        if cfg.full_weak_baseline and cfg.selection != "all":
            base_rows = stage1_rows(plan.w2s, range(len(plan.w2s)), weak_out["w2s"], icl,
                                    "weak")
            tested = {"full_weak": pipe.strong_sft("full_weak", base_rows)["test"], **tested}
        final_name, pair_stats = final["name"], {}
        if cfg.stage2 != "none":                                   # stage II
            samples = pipe.samples(final)
            pairs = build_pairs(cfg, plan.w2s, weak_out["w2s"], samples)
            pair_stats = pair_summary(pairs)
            record.log({"stage": "stage II pairs", **pair_stats})
            record.write_rows("pairs.jsonl", pairs)
            tested["stage2"] = pipe.stage2(final, pairs)["test"]
            final_name = "stage2"
        gold_rows = [{"prompt": r["prompt"], "response": r["solution"]} for r in plan.w2s]
        ceiling = pipe.strong_sft("strong_ceiling", gold_rows)["test"]          # the ceiling
        base = pipe.base_answers()                                 # the start, for reference
        metrics, predictions = figures(plan.test, tested, weak_out["test"], ceiling, final_name,
                                       cfg.n_boot, cfg.seed)
        metrics["strong_base_acc"] = mean(correctness(base, plan.test))
        record.write_rows("predictions.jsonl", predictions)
        for name, texts in {"weak": weak_out["test"], "strong_ceiling": ceiling,
                            "strong_base": base, **tested}.items():
            record.write_rows(f"solutions-{name.replace('_', '-')}.jsonl", [
                {"id": r["id"], "solution": t, "answer": final_answer(t), "gold": r["answer"],
                 "correct": is_correct(final_answer(t), r["answer"])}
                for r, t in zip(plan.test, texts, strict=True)])
        record.keep("predictions.jsonl (w2s eval pgr reads it), solutions-*.jsonl, pairs.jsonl")
        metrics = {**config_summary(cfg), **metrics,
                   "weak_train2_acc": mean(correctness(weak_out["w2s"], plan.w2s)),
                   **icl_figure(cfg, correctness(icl, plan.w2s)),
                   "stage1_rounds": data_log, **pair_stats,
                   "n_train_1": len(plan.weak_train), "n_train_2": len(plan.w2s),
                   "n_test": len(plan.test), "stages": plan.stages}
        return record.finish(metrics)
