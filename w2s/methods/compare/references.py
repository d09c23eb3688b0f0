"""The comparison's own entries: the strong model as it is, the weak aligned model, the
gold-label DPO ceiling and naive W2S SFT; each a small ordinary run directory
(``entries/<name>/``: config.yaml, env.json, log.jsonl, generations.jsonl, metrics.json).

Every expensive step is a cached stage (:func:`w2s.runs.cached_stage`), keyed by what it depends
on: the weak alignment is made once and shared by every entry that uses it (WSPO, the search
guides, naive SFT), and the strong model's answers are sampled exactly as WSPO and weak-label
sample theirs before training (same prompts, ids, sampling, seed and batch), so the three
agree on the baseline.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from w2s import compute
from w2s.errors import W2SError
from w2s.methods.compare.config import CompareConfig, sampling
from w2s.methods.compare.table import figures_of
from w2s.models.loading import release_memory
from w2s.runs import Cache, Run, atomic_write_text, cached_stage, content_hash, read_jsonl

VERSION = 1
"""Bump when a reference stage's output changes meaning (invalidates its cache entries)."""


@dataclass
class Data:
    """The data every entry shares: the gold training pairs, the held-out rows (``{id,
    prompt}``, ``samples_per_prompt`` per prompt) and the task's prompt format."""

    train: list[dict]
    eval_rows: list[dict]
    prompt_format: str
    meta: dict = field(default_factory=dict)
    test: list[dict] = field(default_factory=list)   # one gold pair per held-out prompt

    def write(self, folder: Path) -> None:
        """The data as a local task folder (``local:<folder>``: train.jsonl, test.jsonl,
        meta.json), what every method entry reads: the same pairs, the same prompts, in order."""
        for name, rows in (("train", self.train), ("test", self.test)):
            _write(folder / f"{name}.jsonl", rows)
        atomic_write_text(folder / "meta.json",
                          json.dumps({"prompt_format": self.prompt_format}) + "\n")


def load_data(cfg: CompareConfig) -> Data:
    """The training pairs (``n_train``, seeded) and held-out prompts, as WSPO selects them."""
    from w2s.data import load_task
    from w2s.data.core import as_prompts, sample_rows

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = load_task(cfg.task, split="train", n=cfg.n_train, seed=cfg.seed)
        test = load_task(cfg.task, split="test")
    if train.kind != "preference":
        raise W2SError(f"task '{cfg.task}' is a {train.kind} task; compare needs a preference "
                       "task ({prompt, chosen, rejected} rows: the gold labels; `w2s tasks`)")
    prompts = as_prompts(test).subset(cfg.n_eval, cfg.seed)
    if not prompts.rows:
        raise W2SError(f"task '{cfg.task}' has no test prompts to evaluate on")
    pairs = {r["id"]: r for r in test.rows}
    fields = ("id", "prompt", "chosen", "rejected")
    return Data([{k: r[k] for k in fields} for r in train.rows],
                sample_rows(prompts.rows, cfg.samples_per_prompt),
                train.meta.get("prompt_format", "plain"),
                {"train": content_hash(train.rows, 16), "n_train": len(train.rows),
                 "eval": content_hash(prompts.rows, 16), "n_prompts": len(prompts.rows)},
                [{k: pairs[r["id"]][k] for k in fields} for r in prompts.rows])


class References:
    """The four reference entries and the shared weak alignment, over one cache."""

    def __init__(self, cfg: CompareConfig, data: Data, log=None):
        from w2s.models import resolve_model
        from w2s.models.loading import pick_dtype
        from w2s.models.resolve import model_identity

        self.cfg, self.data = cfg, data
        self.cache = Cache()
        self.dtype = str(pick_dtype(cfg.dtype)).removeprefix("torch.")
        self.weak = resolve_model(cfg.weak_models[0])
        self.strong = resolve_model(cfg.strong)
        self.ids = {"weak": model_identity(self.weak), "strong": model_identity(self.strong)}
        self.log = log or (lambda record: None)
        self.shared: dict[str, dict] = {}   # compute of the shared stages, by name

    # -- helpers -------------------------------------------------------------------------------
    @property
    def hh(self) -> bool:
        return self.data.prompt_format == "hh"

    @property
    def encode(self) -> dict[str, Any]:
        return {"max_len": self.cfg.max_len, "chat": self.cfg.chat and not self.hh,
                "sep": " " if self.hh else ""}

    def _load(self, source, lora: bool = False):
        from w2s.models import LoraSettings, load_causal_lm

        cfg = self.cfg
        settings = (LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha)
                    if lora and cfg.mode == "lora" else None)
        return load_causal_lm(source, dtype=self.dtype, device=self.accelerator().device,
                              lora=settings, seed=cfg.seed)

    def accelerator(self):
        if not hasattr(self, "_accelerator"):
            from w2s.train import make_accelerator

            self._accelerator = make_accelerator(self.cfg.weak_dpo.train_config(seed=self.cfg.seed))
        return self._accelerator

    def answer(self, model, tok, rows: list[dict]) -> list[dict]:
        """``{id, prompt, response}`` of ``model`` on ``rows``: the entries' one sampling."""
        from w2s.models.generate import generate

        texts = generate(model, tok, [r["prompt"] for r in rows], sampling(self.cfg),
                         chat=self.cfg.chat and not self.hh)
        return [{"id": r["id"], "prompt": r["prompt"],
                 "response": (t.split("\n\nHuman:")[0] if self.hh else t).strip()}
                for r, t in zip(rows, texts, strict=True)]

    def _key_parts(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "format": {**self.encode, "fmt": self.data.prompt_format},
                "version": VERSION}

    def _lora(self) -> list | None:
        return [self.cfg.lora_r, self.cfg.lora_alpha] if self.cfg.mode == "lora" else None

    # -- the shared weak alignment -------------------------------------------------------------
    def weak_aligned(self) -> str:
        """The weak aligned model's location: ``--weak-aligned``, else the weak model after DPO
        on the gold training pairs (a cached stage, its compute kept in :attr:`shared`)."""
        from w2s.models import save_model
        from w2s.train import train_dpo

        cfg = self.cfg
        if cfg.weak_aligned:
            return cfg.weak_aligned
        train_cfg = cfg.weak_dpo.train_config(seed=cfg.seed)
        compute.reset()
        with cached_stage(self.cache, "compare-weak-dpo", "weak_alignment",
                          model=self.ids["weak"], rows=self.data.meta["train"], beta=cfg.beta,
                          mode=cfg.mode, lora=self._lora(), train=dataclasses.asdict(train_cfg),
                          **self._key_parts()) as st:
            if not st.done:
                model, tok = self._load(self.weak, lora=True)
                result = train_dpo(model, tok, self.data.train, train_cfg, beta=cfg.beta,
                                   ref_batch_size=cfg.score_batch_size,
                                   checkpoint_dir=st.progress, accelerator=self.accelerator(),
                                   description="weak DPO (shared)",
                                   log=lambda r: self.log({"stage": "weak DPO", **r}),
                                   **self.encode)
                st.publish(lambda folder: save_model(model, tok, folder),
                           meta={"model": cfg.weak_models[0], "stage": "compare weak DPO"})
                self.log({"stage": "weak_alignment", "steps": result.steps,
                          "final_loss": result.final_loss})
                del model
                release_memory()
        stage = compute.record()["stages"]["weak_alignment"]
        self.shared["weak_alignment"] = figures_of(stage, ["weak_alignment"] if stage["cached"]
                                                   else [])
        return str(st.path)

    # -- the entries -----------------------------------------------------------------------------
    def run_entry(self, name: str, run_dir: Path, weak_aligned: str | None) -> dict:
        """Run the reference entry ``name`` into ``run_dir``; returns its metrics."""
        from w2s.models import resolve_model

        cfg = self.cfg
        settings = {"entry": name, "strong": cfg.strong, "weak": cfg.weak_models[0],
                    "weak_aligned": weak_aligned, "task": cfg.task, "n_eval": cfg.n_eval,
                    "samples_per_prompt": cfg.samples_per_prompt,
                    "sampling": dataclasses.asdict(sampling(cfg)), "seed": cfg.seed}
        if name in ("ceiling", "naive_sft"):
            stage = cfg.ceiling_dpo if name == "ceiling" else cfg.sft
            settings.update(mode=cfg.mode, train=dataclasses.asdict(stage))
        with Run.start("compare-reference", settings, run_dir=run_dir) as run:
            if name == "strong":
                rows, extra = self._answers_of("strong", self.strong, self.ids["strong"]), {}
            elif name == "weak_aligned":
                model = resolve_model(weak_aligned)
                from w2s.models.resolve import model_identity

                rows, extra = self._answers_of("weak_aligned", model, model_identity(model)), {}
            elif name == "ceiling":
                rows, extra = self._ceiling()
            elif name == "naive_sft":
                rows, extra = self._naive_sft(resolve_model(weak_aligned))
            else:
                raise ValueError(name)
            run.write_rows("generations.jsonl", rows)
            return run.finish({"entry": name, "n_answers": len(rows), **extra,
                               "gold_reward_reason": "judged in the comparison's table "
                               "(table.json)"})

    def _answers_of(self, label: str, resolved, identity: dict) -> list[dict]:
        """A model's answers to the held-out rows, cached under what they depend on."""
        with cached_stage(self.cache, "compare-answers", label, model=identity,
                          prompts=content_hash(self.data.eval_rows, 16),
                          sampling=dataclasses.asdict(sampling(self.cfg)),
                          **self._key_parts()) as st:
            if not st.done:
                model, tok = self._load(resolved)
                rows = self.answer(model, tok, self.data.eval_rows)
                st.publish(lambda folder: _write(folder / "generations.jsonl", rows),
                           meta={"stage": f"{label} answers"})
                del model
                release_memory()
        return read_jsonl(st.path / "generations.jsonl")

    def _ceiling(self) -> tuple[list[dict], dict]:
        """DPO of the strong model on the gold pairs; its answers; the model kept (ExPO)."""
        from w2s.train import train_dpo

        cfg = self.cfg
        return self._trained("ceiling", "compare-ceiling", cfg.ceiling_dpo,
                             lambda model, tok, train_cfg, st: train_dpo(
                                 model, tok, self.data.train, train_cfg, beta=cfg.beta,
                                 ref_batch_size=cfg.score_batch_size,
                                 checkpoint_dir=st.progress, accelerator=self.accelerator(),
                                 description="ceiling: strong DPO on gold",
                                 log=lambda r: self.log({"stage": "ceiling", **r}),
                                 **self.encode),
                             rows=self.data.meta["train"], beta=cfg.beta)

    def _naive_sft(self, weak_aligned) -> tuple[list[dict], dict]:
        """The weak aligned model answers the training prompts; the strong model is fine-tuned
        on those answers; its answers to the held-out prompts."""
        from w2s.models.resolve import model_identity
        from w2s.train import train_sft

        cfg = self.cfg
        seen, prompts = set(), []
        for r in self.data.train:
            if r["prompt"] not in seen:
                seen.add(r["prompt"])
                prompts.append({"id": r["id"], "prompt": r["prompt"]})
        with cached_stage(self.cache, "compare-answers", "weak_answers",
                          model=model_identity(weak_aligned), prompts=content_hash(prompts, 16),
                          sampling=dataclasses.asdict(sampling(cfg)), **self._key_parts()) as st:
            if not st.done:
                model, tok = self._load(weak_aligned)
                rows = self.answer(model, tok, prompts)
                st.publish(lambda folder: _write(folder / "generations.jsonl", rows),
                           meta={"stage": "weak aligned answers to the training prompts"})
                del model
                release_memory()
        teacher = read_jsonl(st.path / "generations.jsonl")
        return self._trained("naive_sft", "compare-naive-sft", cfg.sft,
                             lambda model, tok, train_cfg, st2: train_sft(
                                 model, tok, teacher, train_cfg, max_len=cfg.max_len,
                                 chat=self.encode["chat"], sep=self.encode["sep"],
                                 checkpoint_dir=st2.progress, accelerator=self.accelerator(),
                                 description="naive W2S SFT",
                                 log=lambda r: self.log({"stage": "naive_sft", **r})),
                             rows=content_hash(teacher, 16))

    def _trained(self, name: str, kind: str, stage, fit, **parts: Any) -> tuple[list[dict], dict]:
        """The strong model trained by ``fit`` (a cached stage: the model folder, its answers
        and its training record)."""
        from w2s.models import save_model

        cfg = self.cfg
        train_cfg = stage.train_config(seed=cfg.seed)
        with cached_stage(self.cache, kind, name, model=self.ids["strong"], mode=cfg.mode,
                          lora=self._lora(), train=dataclasses.asdict(train_cfg),
                          prompts=content_hash(self.data.eval_rows, 16),
                          sampling=dataclasses.asdict(sampling(cfg)), **parts,
                          **self._key_parts()) as st:
            if not st.done:
                model, tok = self._load(self.strong, lora=True)
                result = fit(model, tok, train_cfg, st)
                answers = self.answer(model, tok, self.data.eval_rows)
                record = {k: v for k, v in result.to_dict().items() if k != "losses"}

                def write(folder: Path) -> None:
                    save_model(model, tok, folder / "model")
                    _write(folder / "generations.jsonl", answers)
                    (folder / "train.json").write_text(json.dumps(record, indent=1) + "\n")

                st.publish(write, meta={"stage": name})
                del model
                release_memory()
        return (read_jsonl(st.path / "generations.jsonl"),
                {"model": str(st.path / "model"),
                 "training": json.loads((st.path / "train.json").read_text())})


def _write(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
