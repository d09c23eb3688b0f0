"""How each step of ``w2s macpo`` runs as a cached stage, and the bodies of those stages.

A stage is one expensive step: an agent's SFT or DPO (:meth:`Stages.fit`), an agent's answers
to a set of prompts (:meth:`Stages.answers`), an iteration's perplexity scoring and pairing, an
evaluation's judging. Each is a :func:`w2s.runs.cached_stage`, the one cache protocol of every
method (:meth:`Stages.stage`):

- its key is its name, its settings and the key of the stage before it (the CHAIN): change an
  SFT setting and that stage and every later one is built anew; the evaluation stages hang off
  the chain (``branch=True``) without extending it, so a new judge redoes only the evaluations;
- a stage writes its files into the run directory under their usual names
  (``iter1/pairs-student.jsonl``, ``init/adapters/teacher1-pos.safetensors``, ...) and
  :meth:`Stages.publish` keeps a copy of them in its cache entry (``files/``) beside its record
  (``record.json``: training figures, pair counts, evaluation figures); what comes next reads
  them from the entry;
- a stage found in the cache copies its files into the run directory and is logged as
  ``finished earlier``: a rerun of the same command, into the same run directory or a new one,
  redoes no finished stage, and a training interrupted mid-way resumes from the loop's
  checkpoints in the stage's ``progress`` folder.

Generation, perplexity scoring and judging run on the main process while the others wait;
training runs on every process (data-parallel).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from w2s.methods.macpo.agents import Base
from w2s.methods.macpo.config import MACPOConfig, sampling, train_config
from w2s.methods.macpo.pairing import POS, agent_name, perplexity
from w2s.runs import Cache, Stage, cached_stage, content_hash, read_jsonl, write_json


class Stages:
    """The plumbing of one ``w2s macpo`` run (accelerator, cache, run directory, the stage
    chain) and the bodies of its stages; :class:`~w2s.methods.macpo.experiment.MACPO` puts
    them together in the order of the paper."""

    def __init__(self, cfg: MACPOConfig):
        from w2s.train import make_accelerator

        self.cfg = cfg
        self.accelerator = make_accelerator(train_config(cfg.sft, cfg.seed))
        self.main = self.accelerator.is_main_process
        self.cache = Cache()
        self.chain = ""   # the key of the last stage on the chain (rooted in the data: begin)
        self.run = None
        self.bases: dict[str, Base] = {}
        self.judge = self.gold = None   # the win-rate judge, the gold-reward judge

    # ---- plumbing ----------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """A progress line on stderr (main process)."""
        if self.main:
            print(f"[macpo] {text}", file=sys.stderr, flush=True)

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log(record)

    def path(self, name: str) -> Path:
        return self.run.path / name

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def base(self, learner: str) -> Base:
        return self.bases[learner]

    # ---- the cache protocol of every stage ---------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str, *, branch: bool = False, **settings: Any) -> Iterator[Stage]:
        """``with self.stage("iter1/dpo/student", beta=0.1, ...) as st:`` -- the cached stage
        ``name``: when ``not st.done``, build it inside the block and end with
        :meth:`publish`; afterwards read its outputs with :meth:`output` and :meth:`record`.
        Its key chains the previous stage's (a ``branch`` does not extend the chain). Found in
        the cache, its files are copied into the run directory and it is logged as finished
        earlier."""
        kind = "macpo-" + name.replace("/", "-")
        with cached_stage(self.cache, kind, name, after=self.chain, **settings) as st:
            found = st.done
            yield st
            if not st.done:
                raise RuntimeError(f"stage {name} ended without publish()")
        if not branch:
            self.chain = st.key
        if found:
            if self.main:
                shutil.copytree(st.path / "files", self.run.path, dirs_exist_ok=True)
            self.log({"stage": name, "status": "finished earlier", "cache_key": st.key})
            self.say(f"{name}: finished earlier (cache entry {st.key})")
        else:
            self.log({"stage": name, "status": "finished", "cache_key": st.key})

    def publish(self, st: Stage, files: list[str], **record: Any) -> None:
        """Finish a stage: its ``files`` (run-directory names, written by the main process)
        and its ``record`` go into its cache entry."""

        def write(folder: Path) -> None:
            (folder / "files").mkdir()
            for name in files:
                target = folder / "files" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.path(name), target)
            write_json(folder / "record.json", record)

        st.publish(write, meta={"files": files})

    @staticmethod
    def output(st: Stage, name: str) -> Path:
        """A finished stage's file ``name`` (its run-directory name) in its cache entry."""
        return st.path / "files" / name

    @staticmethod
    def record(st: Stage) -> dict:
        """A finished stage's record (what :meth:`publish` was given)."""
        return json.loads((st.path / "record.json").read_text())

    # ---- training (every SFT and DPO stage) --------------------------------------------------
    def fit(self, name: str, agent: str, learner: str, rows: list[dict], kind: str, config,
            settings: dict | None = None, *, rows_file: str | None = None,
            start: str | None = None, dpo: dict | None = None) -> dict:
        """The stage ``name``: ``agent`` trained by SFT on ``{prompt, response}`` rows (``kind``
        ``sft``) or by DPO on ``{prompt, chosen, rejected}`` rows (``dpo``, with the keyword
        arguments ``dpo`` of :func:`w2s.train.train_dpo`), its adapter saved as
        ``<init|iter<t>>/adapters/<agent>.safetensors``. Found in the cache, the adapter is
        loaded instead. Returns the stage's record (training figures).

        ``settings``: what else the result depends on (part of the key); ``rows_file``: the
        rows are kept in that file too; ``start``: the agent first becomes a copy of that
        agent; no rows (``--skip-empty``): the adapter carries over unchanged.
        """
        base = self.base(learner)
        adapter = f"{name.split('/')[0]}/adapters/{agent}.safetensors"
        with self.stage(name, **self._settings(learner), train=_train_settings(config),
                        **(settings or {})) as st:
            if st.done:
                base.load(agent, self.output(st, adapter))
            elif not rows:
                if self.main:
                    base.save(agent, self.path(adapter))
                self.publish(st, [adapter], agent=agent, skipped="no pairs", n_examples=0,
                             adapter=adapter)
            else:
                files = [adapter]
                if rows_file:
                    self.run.write_rows(rows_file, rows)
                    files.append(rows_file)
                if start:
                    base.copy(start, agent)
                record = self._train(name, agent, base, rows, kind, config, st.progress,
                                     **(dpo or {}))
                if self.main:
                    base.save(agent, self.path(adapter))
                self.publish(st, files, **record, adapter=adapter)
        return self.record(st)

    def _settings(self, learner: str) -> dict:
        base = self.base(learner)
        return {"model": base.name, "lora": dataclasses.asdict(base.lora),
                "max_len": self.cfg.max_len, "quantize": self.cfg.quantize,
                "dtype": self.cfg.dtype, "format": base.format.describe()}

    def _train(self, name: str, agent: str, base: Base, rows: list[dict], kind: str, config,
               checkpoints: Path, **dpo: Any) -> dict:
        """Train ``agent`` on ``rows`` through the training loop (checkpointing into
        ``checkpoints``, where a rerun resumes); its figures."""
        from w2s.train import train_dpo, train_sft

        fmt = base.format
        base.use(agent)
        last: dict = {}

        def log(rec: dict) -> None:
            last.clear()
            last.update(rec)
            self.log({"stage": name, "agent": agent, **rec})

        common = dict(max_len=self.cfg.max_len, chat=fmt.chat, sep=fmt.sep, bos=fmt.bos,
                      checkpoint_dir=checkpoints, log=log, accelerator=self.accelerator,
                      description=f"{name} ({base.name})")
        started = time.perf_counter()
        if kind == "sft":
            formatted = [{"prompt": fmt.text(r["prompt"]), "response": r["response"]}
                         for r in rows]
            result = train_sft(base.model, base.tokenizer, formatted, config, **common)
        else:
            formatted = [{"prompt": fmt.text(r["prompt"]), "chosen": r["chosen"],
                          "rejected": r["rejected"]} for r in rows]
            result = train_dpo(base.model, base.tokenizer, formatted, config, objective="dpo",
                               **dpo, **common)
        record = {"agent": agent, "model": base.name, "n_examples": len(rows),
                  "steps": result.steps, "final_loss": result.final_loss,
                  "resumed_from": result.resumed_from,
                  "elapsed_s": round(time.perf_counter() - started, 2)}
        for key in ("reward_accuracy", "reward_margin"):
            if key in last:
                record[key] = last[key]
        self.say(f"{name}: {len(rows)} examples, {result.steps} steps, final loss "
                 f"{result.final_loss:.4f} ({record['elapsed_s']} s)")
        return record

    # ---- generation --------------------------------------------------------------------------
    def answers(self, name: str, agent: str, learner: str, prompts: list[dict], file: str,
                seed_offset: int, branch: bool = False) -> list[dict]:
        """The stage ``name``: ``agent``'s answers to ``prompts`` as ``{id, prompt, response,
        agent, model}`` rows, kept in ``file``; sampled with the generation seed +
        ``seed_offset``. ``branch``: an evaluation's answers, which later stages do not
        depend on."""
        gen = sampling(self.cfg.generation, seed_offset)
        with self.stage(name, branch=branch, agent=agent, sampling=dataclasses.asdict(gen),
                        prompts=content_hash(prompts), backend=self.backend) as st:
            if not st.done:
                rows: list[dict] = []
                if self.main:
                    started = time.perf_counter()
                    base = self.base(learner)
                    base.use(agent)
                    texts = self._generate(base, agent, [base.format.text(p["prompt"])
                                                         for p in prompts], gen)
                    rows = [{"id": p["id"], "prompt": p["prompt"],
                             "response": base.format.clean(text), "agent": agent,
                             "model": base.name}
                            for p, text in zip(prompts, texts, strict=True)]
                    self.run.write_rows(file, rows)
                    elapsed = round(time.perf_counter() - started, 2)
                    self.say(f"{name}: {len(rows)} answers "
                             f"({sum(not r['response'] for r in rows)} empty, {elapsed} s)")
                self.publish(st, [file], n=len(rows),
                             empty=sum(not r["response"] for r in rows))
        return read_jsonl(self.output(st, file))

    def _generate(self, base: Base, agent: str, texts: list[str], gen) -> list[str]:
        """``agent``'s answers with the run's backend: hf generates with the agent's adapter
        active on the loaded model; vllm through the adapter, exported as it is now, on one
        LoRA engine per base model."""
        from w2s.models.generate import VLLMAdapter, generate

        if self.backend != "vllm":
            return generate(base.model, base.tokenizer, texts, gen, chat=base.format.chat,
                            bos=base.format.bos)
        scratch = self.path(".vllm")
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            adapter = VLLMAdapter(agent, str(base.export(agent, scratch / agent)),
                                  rank=base.lora.r, memory=self.cfg.generation.vllm_memory)
            return generate(base.model, base.tokenizer, texts, gen, chat=base.format.chat,
                            backend="vllm", model_name=base.location, adapter=adapter,
                            bos=base.format.bos)
        finally:  # vLLM has read the adapter by the time generate returns
            shutil.rmtree(scratch, ignore_errors=True)

    @property
    def backend(self) -> str:
        """The generation backend that runs: vllm only where it can (installed, a GPU, every
        base model a hub id or folder, no --quantize); otherwise hf, after a warning saying
        why (see :func:`w2s.models.generate.pick_backend`)."""
        if not hasattr(self, "_backend"):
            from w2s.models.generate import pick_backend

            backend = pick_backend(self.cfg.generation.backend)
            unfit = [b.name for b in self.bases.values() if b.location is None]
            why = (f"vllm loads a hub id or a folder, which {', '.join(unfit)} is not" if unfit
                   else "vllm generation with --quantize is not wired in w2s"
                   if self.cfg.quantize != "none" else "")
            if backend == "vllm" and why:
                warnings.warn(f"{why}; generating with the hf backend instead", stacklevel=2)
                backend = "hf"
            self._backend = backend
        return self._backend

    # ---- perplexity ----------------------------------------------------------------------------
    def perplexities(self, learner: str, rows: list[dict], *, base: bool = False) -> list[dict]:
        """``rows`` (``{prompt, response, ...}``: the learner's candidate chosen answers,
        :func:`~w2s.methods.macpo.pairing.candidates`) with their perplexity under its positive
        agent, or with ``base`` under its base model (adapters off: the model before any
        training). The perplexity is exp of the mean per-token NLL of the response (and its EOS)
        given the prompt, in the learner's format, from the one log-prob helper
        (:func:`w2s.models.response_logprobs`, through :func:`w2s.train.preference.score_items`)."""
        from w2s.models import pad_id
        from w2s.train.preference import encode, score_items

        model = self.base(learner)
        model.use(agent_name(learner, POS))
        fmt = model.format
        items = [encode(model.tokenizer, fmt.text(r["prompt"]), r["response"],
                        max_len=self.cfg.max_len, chat=fmt.chat, sep=fmt.sep, bos=fmt.bos)
                 for r in rows]
        sums, counts = (score_items(model.model, items, pad_id(model.tokenizer), reference=base)
                        if items else ([], []))
        return [{**r, "perplexity": perplexity(s, n), "tokens": n}
                for r, s, n in zip(rows, sums, counts, strict=True)]

    # ---- judging -----------------------------------------------------------------------------
    def judged(self, candidate: list[dict], baseline: list[dict], where: str,
               learner: str) -> tuple[dict, list[str]]:
        """``candidate``'s answers judged against ``baseline``'s by the win-rate judge and the
        gold-reward judge (where the run has them): its figures, and the judgment files
        written (``<where>/judgments-<learner>.jsonl``, ``<where>/gold-<learner>.jsonl`` when
        the gold judge is another one)."""
        from w2s.evaluation import evaluate_winrate

        judge, gold = self.judge, self.gold
        out: dict[str, Any] = {"win_rate": None, "gold_reward": None}
        files = []
        if judge is not None:
            files.append(f"{where}/judgments-{learner}.jsonl")
            m = evaluate_winrate(candidate, baseline, judge, run=self.run, judgments=files[-1])
            out.update({k: m.get(k) for k in ("win_rate", "win_rate_se", "wins", "ties",
                                              "losses", "n", "lc_win_rate")})
            if gold is judge:
                out["gold_reward"] = m["candidate_reward_mean"]
                out["baseline_gold_reward"] = m["baseline_reward_mean"]
        if gold is not None and gold is not judge:
            files.append(f"{where}/gold-{learner}.jsonl")
            g = evaluate_winrate(candidate, baseline, gold, run=self.run, judgments=files[-1])
            out["gold_reward"] = g["candidate_reward_mean"]
            out["baseline_gold_reward"] = g["baseline_reward_mean"]
            out["gold_win_rate"] = g["win_rate"]
        return out, files

    def gold_only(self, rows: list[dict], where: str, learner: str) -> tuple[dict, list[str]]:
        """The baseline's own gold reward (its win rate against itself is 50 by definition),
        and the file of its scores (``<where>/gold-<learner>.jsonl``)."""
        if self.gold is None:
            return {"win_rate": None, "gold_reward": None}, []
        scores = self.gold.score([r["prompt"] for r in rows], [r["response"] for r in rows])
        file = f"{where}/gold-{learner}.jsonl"
        self.run.write_rows(file, [{"id": r["id"], "score": s}
                                   for r, s in zip(rows, scores, strict=True)])
        return {"win_rate": None, "gold_reward": float(sum(scores) / len(scores))}, [file]


def _train_settings(config) -> dict:
    """A TrainConfig as stage settings, without what does not change the result."""
    from w2s.train.config import RESUME_FREE

    return {k: v for k, v in dataclasses.asdict(config).items() if k not in RESUME_FREE}
