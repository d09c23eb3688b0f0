"""The steps of ``w2s macpo`` (see :mod:`w2s.methods.macpo` for the method).

Two layers:

- pure functions, checkable on hand-made agent outputs (no model anywhere):
  :func:`positive_sources` (whose answers a learner learns from), :func:`candidates`,
  :func:`perplexity_filter` (which candidates survive), :func:`contrastive_pairs` (chosen =
  an unfamiliar positive answer, rejected = the learner's own negative agent's answer);
- :class:`MACPO`, one method per visible step of the experiment: ``load_data``,
  ``load_agents``, ``initialise``, ``generate``, ``pairs``, ``train_learners``, ``evaluate``,
  ``metrics``.

Agents. Each model is loaded ONCE (:class:`Base`); its positive and negative agents are two named
LoRA adapters on it (peft multi-adapter: ``add_adapter`` / ``set_adapter``), so K teachers and a
student take the memory of their K + 1 base models plus adapters, not of 2K + 2 models. An agent
is named ``<learner>-<pos|neg>``: ``teacher1-pos``, ..., ``student-neg``. Each base formats
prompts its own way (:class:`Format`): its chat template when its tokenizer has one, else the
task's plain transcript (Anthropic HH) or the vicuna ``USER: ... ASSISTANT:`` form of the
authors' scripts. Answers travel between agents as text.

The run directory (every file a step wrote, so each step can be checked)::

    agents.json                  who is who: learner -> model, adapters, prompt format
    data/labeled.jsonl           the labeled half (teachers' SFT), data/q_w2s.jsonl the
                                 unlabeled prompts, data/test.jsonl the test prompts
    stages.json                  finished stages: name, settings key, figures (resume markers)
    init/adapters/<agent>.safetensors      each agent's adapter after initialisation
    init/gen-teacher1-pos.jsonl  a teacher's answers to Q_w2s (pos: the student's SFT data;
                                 neg: the student negative agent's SFT data)
    init/sft-student-pos.jsonl   those answers as the student's SFT rows (with their teacher)
    init/test-<learner>-pos.jsonl, init/judgments-<teacher>.jsonl
                                 test answers of the initial agents; the student's are the
                                 baseline of every win rate
    iter1/gen-<agent>.jsonl      every agent's answers to Q_w2s in iteration 1
    iter1/perplexity-<learner>.jsonl   every candidate chosen answer, its source, its
                                 perplexity under the learner and whether the filter kept it
    iter1/pairs-<learner>.jsonl  the learner's DPO pairs (prompt, chosen, rejected, sources)
    iter1/adapters/<learner>-pos.safetensors   the learner's positive agent after iteration 1
    iter1/test-<learner>-pos.jsonl, iter1/judgments-<learner>.jsonl   its evaluation
                                 (gold-<learner>.jsonl too when the gold judge is another one)
    checkpoints/<stage>/         the training loop's checkpoints of an unfinished training

Resuming. A stage is finished when ``stages.json`` records it with the key of the settings it
depends on, chained through every earlier stage (change an SFT setting and everything from that
stage on is redone; change the judge and only the evaluations are). Its outputs were written
before the record, atomically. A rerun skips finished stages (loading their adapters, reading
their files) and continues where the last one stopped; a training interrupted mid-way resumes
from its loop checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import w2s.tiny  # noqa: F401  (registers the builder of tiny:...+<stage> model names)
from w2s.errors import W2SError
from w2s.methods.macpo import SPEC
from w2s.methods.macpo.config import MACPOConfig, check_config, sampling, train_config
from w2s.runs import content_hash, read_jsonl

POS, NEG = "pos", "neg"


def agent_name(learner: str, polarity: str) -> str:
    """``teacher1`` + ``pos`` -> ``teacher1-pos``."""
    return f"{learner}-{polarity}"


# --------------------------------------------------------------------------------------------
# pure steps: who learns from whom, the perplexity filter, the pairs


def positive_sources(learner: str, teachers: list[str], student: str = "student") -> list[str]:
    """The agents whose POSITIVE answers are unfamiliar to ``learner`` (its chosen candidates).

    The student learns from every weak teacher; a teacher learns from the student and from the
    other teachers (never from itself: its own answers are familiar).

    >>> positive_sources("student", ["teacher1", "teacher2"])
    ['teacher1-pos', 'teacher2-pos']
    >>> positive_sources("teacher1", ["teacher1", "teacher2"])
    ['student-pos', 'teacher2-pos']
    """
    if learner == student:
        return [agent_name(t, POS) for t in teachers]
    if learner not in teachers:
        raise ValueError(f"unknown learner {learner!r}")
    return [agent_name(student, POS)] + [agent_name(t, POS) for t in teachers if t != learner]


def candidates(learner: str, prompts: list[dict], answers: dict[str, dict[str, str]],
               teachers: list[str], student: str = "student") -> list[dict]:
    """The learner's candidate chosen answers: one row per (prompt, source agent) with a
    non-empty answer, in prompt order then source order: ``{id, prompt, source, response}``.

    ``answers[agent][prompt id]`` is that agent's answer to that prompt.
    """
    rows = []
    for p in prompts:
        for source in positive_sources(learner, teachers, student):
            text = answers[source].get(p["id"], "")
            if text.strip():
                rows.append({"id": p["id"], "prompt": p["prompt"], "source": source,
                             "response": text})
    return rows


def perplexity(summed_logprob: float, n_tokens: int) -> float:
    """``exp(-summed log-prob / tokens)`` of a response (inf for an empty one)."""
    if n_tokens <= 0:
        return math.inf
    return math.exp(-summed_logprob / n_tokens)


def perplexity_filter(rows: list[dict], rule: str, k: int = 1,
                      max_perplexity: float | None = None) -> list[dict]:
    """Mark which candidates the filter keeps: a copy of each row with ``kept`` set.

    Each row carries ``perplexity`` (under the learner's positive agent). Rules:

    - ``lowest``: per prompt id, the ``k`` rows with the lowest perplexity;
    - ``lowest-global``: the ``k`` rows with the lowest perplexity over all prompts;
    - ``threshold``: the rows with ``perplexity <= max_perplexity``;
    - ``none``: every row.

    Ties keep the earlier row (rows come in source order: the student, then teacher 1, 2, ...).
    """
    out = [dict(r, kept=False) for r in rows]
    if rule == "none":
        for r in out:
            r["kept"] = True
    elif rule == "threshold":
        if max_perplexity is None:
            raise ValueError("the threshold rule needs max_perplexity")
        for r in out:
            r["kept"] = r["perplexity"] <= max_perplexity
    elif rule == "lowest":
        by_prompt: dict[str, list[int]] = {}
        for i, r in enumerate(out):
            by_prompt.setdefault(r["id"], []).append(i)
        for idx in by_prompt.values():
            for i in sorted(idx, key=lambda i: (out[i]["perplexity"], i))[:k]:
                out[i]["kept"] = True
    elif rule == "lowest-global":
        for i in sorted(range(len(out)), key=lambda i: (out[i]["perplexity"], i))[:k]:
            out[i]["kept"] = True
    else:
        raise ValueError(f"unknown filter rule {rule!r}")
    return out


def contrastive_pairs(learner: str, scored: list[dict], negatives: dict[str, str]) -> list[dict]:
    """The learner's DPO pairs: each KEPT candidate is a chosen answer; the rejected answer is
    the learner's own negative agent's answer to the same prompt (``negatives[prompt id]``).

    A prompt whose negative answer is empty, or equal to the chosen text, gives no pair.
    Rows: ``{id, prompt, chosen, rejected, chosen_from, rejected_from, chosen_perplexity}``.
    """
    pairs = []
    for r in scored:
        rejected = negatives.get(r["id"], "")
        if not r["kept"] or not rejected.strip() or rejected == r["response"]:
            continue
        pairs.append({"id": r["id"], "prompt": r["prompt"], "chosen": r["response"],
                      "rejected": rejected, "chosen_from": r["source"],
                      "rejected_from": agent_name(learner, NEG),
                      "chosen_perplexity": r["perplexity"]})
    return pairs


# --------------------------------------------------------------------------------------------
# how each base model reads a prompt


@dataclasses.dataclass(frozen=True)
class Format:
    """How one base model sees a prompt and where its answer ends.

    ``templated``: its tokenizer has a chat template (the prompt is one user turn).
    Without one, an Anthropic-HH transcript (``prompt_format == "hh"``) is used as it is and the
    answer follows after a space; a plain prompt is written in the vicuna form of the authors'
    scripts, ``USER: <prompt> ASSISTANT:``. Generated answers are cut where the format's next
    user turn would begin.
    """

    templated: bool
    prompt_format: str = "plain"

    @property
    def chat(self) -> bool:
        return self.templated

    @property
    def sep(self) -> str:
        return "" if self.templated else " "

    def text(self, prompt: str) -> str:
        if self.templated or self.prompt_format == "hh":
            return prompt
        return f"USER: {prompt} ASSISTANT:"

    def clean(self, answer: str) -> str:
        """The generated text as an answer: cut at a next user turn, whitespace stripped."""
        if not self.templated:
            marker = "\n\nHuman:" if self.prompt_format == "hh" else "USER:"
            answer = answer.split(marker, 1)[0]
        return answer.strip()

    def describe(self) -> str:
        if self.templated:
            return "chat template"
        return "HH transcript" if self.prompt_format == "hh" else "vicuna (USER: ... ASSISTANT:)"


def qv_targets(model) -> list[str] | str:
    """The query and value projections of ``model`` (MACPO's LoRA targets): ``q_proj, v_proj``
    (Llama, Mistral, Qwen, OPT, ...), GPT-2's fused ``c_attn`` (query, key and value in one
    matrix), else every linear layer."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if {"q_proj", "v_proj"} <= leaves:
        return ["q_proj", "v_proj"]
    if "c_attn" in leaves:
        return ["c_attn"]
    if {"query", "value"} <= leaves:
        return ["query", "value"]
    return "all-linear"


class Base:
    """One loaded copy of a base model; its agents are named LoRA adapters on it.

    ``use(agent)`` makes an agent active (generation, scoring and training go through it; only
    its adapter requires grad). Adapters are saved and loaded as safetensors of the adapter's own
    weights (peft's ``get/set_peft_model_state_dict``).
    """

    def __init__(self, name: str, cfg: MACPOConfig, device, prompt_format: str):
        from w2s.models import LoraSettings, apply_lora, load_causal_lm, resolve_model

        self.name = name
        resolved = resolve_model(name)
        # what vLLM can load: a hub id or a folder (not a tiny or packaged offline model)
        self.location = (resolved.location if resolved.source in ("alias", "hub", "local")
                         else None)
        quantize = None if cfg.quantize == "none" else cfg.quantize
        model, self.tokenizer = load_causal_lm(name, dtype=cfg.dtype, device=device,
                                               quantize=quantize, seed=cfg.seed)
        if quantize:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=cfg.sft.gradient_checkpointing)
        targets: list[str] | str = qv_targets(model)
        if cfg.lora_targets.strip().lower() not in ("auto", ""):
            text = cfg.lora_targets.strip()
            targets = text if text == "all-linear" else [t.strip() for t in text.split(",")]
        self.lora = LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, targets=targets)
        self.model = apply_lora(model, self.lora, seed=cfg.seed)  # adapter "default", replaced
        self.format = Format(bool(getattr(self.tokenizer, "chat_template", None)), prompt_format)
        self.agents: list[str] = []

    def add(self, agent: str, seed: int) -> None:
        """A new adapter ``agent`` (LoRA A drawn from ``seed``, B zero: it starts as the base)."""
        config = copy.deepcopy(self.model.peft_config[self.agents[0] if self.agents
                                                      else "default"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model.add_adapter(agent, config)
        if not self.agents:
            self.model.set_adapter(agent)
            self.model.delete_adapter("default")
        self.agents.append(agent)

    def use(self, agent: str) -> None:
        self.model.set_adapter(agent)

    def state(self, agent: str) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().cpu().contiguous().clone()
                for k, v in get_peft_model_state_dict(self.model, adapter_name=agent).items()}

    def set_state(self, agent: str, state: dict[str, torch.Tensor]) -> None:
        from peft.utils import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, state, adapter_name=agent)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise W2SError(f"adapter weights do not fit {self.name}'s agent {agent} "
                           f"({unexpected[0]}); they were made with other LoRA settings")

    def save(self, agent: str, path: Path) -> None:
        """Write the agent's adapter weights atomically (temp file + rename)."""
        import os

        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(self.state(agent), str(tmp))
        os.replace(tmp, path)

    def load(self, agent: str, path: Path) -> None:
        from safetensors.torch import load_file

        self.set_state(agent, load_file(str(path)))

    def export(self, agent: str, folder: Path) -> Path:
        """The agent's adapter as a peft folder (``adapter_config.json`` and weights), what
        vLLM loads a LoRA adapter from; returns that folder."""
        self.model.save_pretrained(str(folder), selected_adapters=[agent])
        found = [p.parent for p in folder.rglob("adapter_config.json")]
        if len(found) != 1:
            raise W2SError(f"exporting agent {agent} for vllm wrote {len(found)} adapter "
                           f"folders under {folder}")
        return found[0]

    def copy(self, source: str, target: str) -> None:
        """``target`` becomes an exact copy of ``source`` (the strong negative agent starts as
        the strong positive one)."""
        self.set_state(target, self.state(source))


# --------------------------------------------------------------------------------------------
# stage records (resume markers)


class StageBook:
    """Which stages of a run directory are finished, and with which settings (``stages.json``).

    Each main stage's key chains the previous one's: ``key = hash(previous key, name,
    settings)``, so a changed setting invalidates its stage and every later one. Evaluation
    stages hang off the chain (``branch=True``) without extending it.
    """

    def __init__(self, run):
        import json

        self.run = run
        self.path = run.path / "stages.json"
        self.records: dict[str, dict] = {}
        if self.path.is_file():
            self.records = json.loads(self.path.read_text()).get("stages", {})
        self.chain = "macpo-v1"
        self.keys: dict[str, str] = {}

    def begin(self, name: str, branch: bool = False, **settings: Any) -> dict | None:
        """The stage's earlier record when it finished with the same key, else None."""
        key = content_hash([self.chain, name, settings])
        self.keys[name] = key
        if not branch:
            self.chain = key
        record = self.records.get(name)
        return record if record is not None and record.get("key") == key else None

    def finish(self, name: str, **record: Any) -> dict:
        import datetime as _dt

        self.records[name] = {"key": self.keys[name], **record,
                              "time": _dt.datetime.now().isoformat(timespec="seconds")}
        self.run.write_json("stages.json", {"stages": self.records})
        return self.records[name]


# --------------------------------------------------------------------------------------------
# the experiment


class MACPO:
    """One ``w2s macpo`` run: the data, the agents, and one method per step."""

    def __init__(self, cfg: MACPOConfig, plan: dict):
        from w2s.train import make_accelerator

        self.cfg = cfg
        self.plan = plan
        self.teachers: list[str] = plan["teachers"]
        self.student: str = plan["student"]
        self.learners: list[str] = plan["learners"]
        self.models = {**dict(zip(self.teachers, plan["weak"], strict=True)),
                       self.student: plan["strong"]}
        self.accelerator = make_accelerator(train_config(cfg.sft, cfg.seed))
        self.main = self.accelerator.is_main_process
        self.run = None
        self.book: StageBook | None = None
        self.bases: dict[str, Base] = {}
        self.judge = self.gold = None
        self.figures: dict[int, dict] = {}   # iteration -> evaluation figures
        self.training: dict[int, dict] = {}  # iteration -> learner -> training record
        self.pair_counts: dict[int, dict] = {}
        self.started = time.perf_counter()

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

    def agents(self) -> list[str]:
        return [agent_name(lrn, pol) for lrn in self.learners for pol in (POS, NEG)]

    # ---- data --------------------------------------------------------------------------------
    def load_data(self) -> None:
        """Train rows (``n_train``, sampled with the seed) split by prompt into the labeled half
        (teachers' SFT) and the unlabeled half, whose distinct prompts are Q_w2s; the distinct
        prompts of ``n_test`` test rows for evaluation."""
        from w2s.data import halves, load_task

        cfg = self.cfg
        train = load_task(cfg.task, split="train", n=cfg.n_train, seed=cfg.seed)
        if train.kind != "preference":
            raise W2SError(f"task '{cfg.task}' is a {train.kind} task; MACPO needs a preference "
                           "task with prompt, chosen and rejected (`w2s tasks`)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a small test split is reported in metrics instead
            test = load_task(cfg.task, split="test", n=cfg.n_test, seed=0)
        labeled, unlabeled = halves(train.rows, seed=cfg.seed, group="prompt")
        self.labeled = labeled
        self.q_w2s = _distinct_prompts(unlabeled)
        self.test = _distinct_prompts(test.rows)
        if len(labeled) < 2 or len(self.q_w2s) < 2:
            raise W2SError(f"task '{cfg.task}' gives {len(labeled)} labeled rows and "
                           f"{len(self.q_w2s)} unlabeled prompts from n_train {cfg.n_train}; "
                           "need at least 2 of each (raise --n-train)")
        if not self.test:
            raise W2SError(f"task '{cfg.task}' has no test prompts; MACPO evaluates on them")
        self.prompt_format = train.meta.get("prompt_format", "plain")
        self.fingerprints = {"train": train.fingerprint(), "test": test.fingerprint(),
                             "labeled": content_hash(labeled), "q_w2s": content_hash(self.q_w2s),
                             "test_prompts": content_hash(self.test)}

    # ---- judges ------------------------------------------------------------------------------
    def load_judges(self) -> None:
        """Build the win-rate judge and the gold-reward judge once (a model judge is loaded
        now, so a judge that cannot be had fails before any training)."""
        from w2s.evaluation.judges import build_judge

        cfg = self.cfg
        if cfg.judge.strip().lower() != "none":
            self.judge = build_judge(cfg.judge, device=str(self.accelerator.device))
        if cfg.gold_judge:
            self.gold = build_judge(cfg.gold_judge, device=str(self.accelerator.device))
            if self.gold.kind != "reward":
                raise W2SError(f"gold_judge '{cfg.gold_judge}' is a {self.gold.kind} judge; the "
                               "gold reward needs a reward judge (vader, reward:, rm:, cls:)")
        elif self.judge is not None and self.judge.kind == "reward":
            self.gold = self.judge

    # ---- agents ------------------------------------------------------------------------------
    def load_agents(self) -> None:
        """Load each model once and put its positive and negative agents on it."""
        for k, learner in enumerate(self.learners):
            base = Base(self.models[learner], self.cfg, self.accelerator.device,
                        self.prompt_format)
            for j, polarity in enumerate((POS, NEG)):
                base.add(agent_name(learner, polarity), seed=self.cfg.seed + 2 * k + j)
            self.bases[learner] = base

    def environment(self) -> dict:
        return {"data": self.fingerprints, "agents": self.agents_table(),
                "judge": self.judge.identity() if self.judge is not None else None,
                "gold_judge": self.gold.identity() if self.gold is not None else None,
                "n_labeled": len(self.labeled), "n_q_w2s": len(self.q_w2s),
                "n_test_prompts": len(self.test),
                "generation": {"backend": self.backend,
                               "requested_backend": self.cfg.generation.backend}}

    def agents_table(self) -> dict:
        table = {}
        for learner, base in self.bases.items():
            table[learner] = {"model": base.name,
                              "role": "student" if learner == self.student else "weak teacher",
                              "agents": list(base.agents), "prompt_format": base.format.describe(),
                              "lora_targets": base.lora.targets, "lora_r": base.lora.r,
                              "base_parameters": base_parameters(base.model),
                              "adapter_parameters": sum(v.numel() for v in
                                                        base.state(base.agents[0]).values())}
        return table

    def begin(self, run) -> None:
        """Attach the run directory: its stage records, agents.json and the data files."""
        self.run = run
        self.book = StageBook(run)
        run.write_json("agents.json", self.agents_table())
        record = self.book.begin("data", task=self.cfg.task, n_train=self.cfg.n_train,
                                 n_test=self.cfg.n_test, seed=self.cfg.seed,
                                 data=self.fingerprints)
        if record is None:
            run.write_rows("data/labeled.jsonl", self.labeled)
            run.write_rows("data/q_w2s.jsonl", self.q_w2s)
            run.write_rows("data/test.jsonl", self.test)
            self.book.finish("data", n_labeled=len(self.labeled), n_q_w2s=len(self.q_w2s),
                             n_test=len(self.test))
        self.log({"stage": "data", "n_labeled": len(self.labeled), "n_q_w2s": len(self.q_w2s),
                  "n_test": len(self.test), "resumed": record is not None})

    # ---- training (one helper for every SFT / DPO stage) -------------------------------------
    def _settings(self, learner: str) -> dict:
        base = self.base(learner)
        return {"model": base.name, "lora": dataclasses.asdict(base.lora),
                "max_len": self.cfg.max_len, "quantize": self.cfg.quantize,
                "dtype": self.cfg.dtype, "format": base.format.describe()}

    def _train(self, stage: str, agent: str, learner: str, rows: list[dict], kind: str,
               config, adapter_file: Path, **dpo) -> dict:
        """Train ``agent`` (SFT on ``{prompt, response}`` or DPO on ``{prompt, chosen,
        rejected}`` rows), save its adapter, record the stage; checkpoints resume a kill."""
        from w2s.train import train_dpo, train_sft

        base = self.base(learner)
        fmt = base.format
        base.use(agent)
        ckpt = self.path("checkpoints") / stage.replace("/", "-")
        last: dict = {}

        def log(rec: dict) -> None:
            last.clear()
            last.update(rec)
            self.log({"stage": stage, "agent": agent, **rec})

        common = dict(max_len=self.cfg.max_len, chat=fmt.chat, sep=fmt.sep, checkpoint_dir=ckpt,
                      log=log, accelerator=self.accelerator,
                      description=f"{stage} ({base.name})")
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
        if self.main:
            base.save(agent, adapter_file)
        self.barrier()
        record = {"agent": agent, "model": base.name, "n_examples": len(rows),
                  "steps": result.steps, "final_loss": result.final_loss,
                  "resumed_from": result.resumed_from,
                  "elapsed_s": round(time.perf_counter() - started, 2),
                  "adapter": str(adapter_file.relative_to(self.run.path))}
        for key in ("reward_accuracy", "reward_margin"):
            if key in last:
                record[key] = last[key]
        if self.main:
            shutil.rmtree(ckpt, ignore_errors=True)
        self.book.finish(stage, **record)
        self.say(f"{stage}: {len(rows)} examples, {result.steps} steps, final loss "
                 f"{result.final_loss:.4f} ({record['elapsed_s']} s)")
        return record

    def _restore(self, stage: str, record: dict, learner: str, agent: str) -> dict:
        self.base(learner).load(agent, self.path(record["adapter"]))
        self.log({"stage": stage, "status": "finished earlier: adapter loaded",
                  "adapter": record["adapter"]})
        self.say(f"{stage}: finished earlier, adapter loaded")
        return record

    # ---- generation ---------------------------------------------------------------------------
    def _answers(self, stage: str, agent: str, learner: str, prompts: list[dict], file: str,
                 seed_offset: int, branch: bool = False) -> dict[str, str]:
        """``agent``'s answers to ``prompts`` -> ``{prompt id: answer}``, written to ``file``
        (``{id, prompt, response, agent, model}`` rows); read back when the stage finished.
        ``branch``: an evaluation's answers, which later stages do not depend on."""

        gen = sampling(self.cfg.generation, seed_offset)
        record = self.book.begin(stage, branch=branch, agent=agent, sampling=dataclasses.asdict(gen),
                                 prompts=content_hash(prompts))
        if record is None:
            base = self.base(learner)
            if self.main:
                started = time.perf_counter()
                base.use(agent)
                texts = self._generate(base, agent, [base.format.text(p["prompt"])
                                                     for p in prompts], gen)
                rows = [{"id": p["id"], "prompt": p["prompt"],
                         "response": base.format.clean(text), "agent": agent, "model": base.name}
                        for p, text in zip(prompts, texts, strict=True)]
                self.run.write_rows(file, rows)
                empty = sum(not r["response"] for r in rows)
                elapsed = round(time.perf_counter() - started, 2)
                self.say(f"{stage}: {len(rows)} answers ({empty} empty, {elapsed} s)")
            self.barrier()
            rows = read_jsonl(self.path(file))
            self.book.finish(stage, file=file, n=len(rows),
                             empty=sum(not r["response"] for r in rows))
        else:
            rows = read_jsonl(self.path(file))
        return {r["id"]: r["response"] for r in rows}

    def _generate(self, base: Base, agent: str, texts: list[str], gen) -> list[str]:
        """``agent``'s answers with the run's backend: hf generates with the agent's adapter
        active on the loaded model; vllm through the adapter, exported as it is now, on one
        LoRA engine per base model."""
        from w2s.models.generate import VLLMAdapter, generate

        if self.backend != "vllm":
            return generate(base.model, base.tokenizer, texts, gen, chat=base.format.chat)
        scratch = self.path(".vllm")
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            adapter = VLLMAdapter(agent, str(base.export(agent, scratch / agent)),
                                  rank=base.lora.r, memory=self.cfg.generation.vllm_memory)
            return generate(base.model, base.tokenizer, texts, gen, chat=base.format.chat,
                            backend="vllm", model_name=base.location, adapter=adapter)
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

    # ---- initialisation ----------------------------------------------------------------------
    def initialise(self) -> None:
        """Weak positive / negative agents by SFT on chosen / rejected responses; the strong
        positive by SFT on the weak positive agents' answers to Q_w2s; the strong negative
        continued from it on the weak negative agents' answers."""
        cfg = self.cfg
        sft = train_config(cfg.sft, cfg.seed)
        for teacher in self.teachers:
            for polarity, field in ((POS, "chosen"), (NEG, "rejected")):
                agent = agent_name(teacher, polarity)
                stage = f"init/sft/{agent}"
                record = self.book.begin(stage, **self._settings(teacher), train=_train(sft),
                                         data=field)
                if record is not None:
                    self._restore(stage, record, teacher, agent)
                    continue
                rows = [{"prompt": r["prompt"], "response": r[field]} for r in self.labeled]
                self._train(stage, agent, teacher, rows, "sft", sft,
                            self.path(f"init/adapters/{agent}.safetensors"))

        weak_answers: dict[str, dict[str, str]] = {}
        for teacher in self.teachers:
            for polarity in (POS, NEG):
                agent = agent_name(teacher, polarity)
                weak_answers[agent] = self._answers(f"init/gen/{agent}", agent, teacher,
                                                    self.q_w2s, f"init/gen-{agent}.jsonl", 0)

        for polarity in (POS, NEG):
            agent = agent_name(self.student, polarity)
            stage = f"init/sft/{agent}"
            tcfg = sft if polarity == POS else train_config(
                cfg.sft, cfg.seed, epochs=cfg.strong_neg_epochs)
            record = self.book.begin(stage, **self._settings(self.student), train=_train(tcfg))
            if record is not None:
                self._restore(stage, record, self.student, agent)
                continue
            rows = [{"id": p["id"], "prompt": p["prompt"],
                     "response": weak_answers[agent_name(t, polarity)][p["id"]],
                     "teacher": agent_name(t, polarity)}
                    for p in self.q_w2s for t in self.teachers
                    if weak_answers[agent_name(t, polarity)].get(p["id"], "").strip()]
            if not rows:
                raise W2SError(f"the weak {polarity} agents gave no non-empty answer to the "
                               f"{len(self.q_w2s)} prompts of Q_w2s, so the strong {polarity} "
                               "agent has nothing to learn from; see init/gen-*.jsonl (raise "
                               "--max-new-tokens or train the teachers longer)")
            self.run.write_rows(f"init/sft-{agent}.jsonl", rows)
            if polarity == NEG:  # continue from the strong positive agent
                self.base(self.student).copy(agent_name(self.student, POS), agent)
            self._train(stage, agent, self.student, rows, "sft", tcfg,
                        self.path(f"init/adapters/{agent}.safetensors"))

    # ---- one iteration -----------------------------------------------------------------------
    def generate(self, t: int) -> dict[str, dict[str, str]]:
        """Every agent (each positive as it is now, each negative) answers Q_w2s."""
        return {agent: self._answers(f"iter{t}/gen/{agent}", agent, agent.rsplit("-", 1)[0],
                                     self.q_w2s, f"iter{t}/gen-{agent}.jsonl", t)
                for agent in self.agents()}

    def pairs(self, t: int, answers: dict[str, dict[str, str]]) -> dict[str, list[dict]]:
        """Per learner: score every unfamiliar positive answer's perplexity under the learner's
        positive agent, filter, and pair each kept one with the learner's own negative answer.
        Writes ``iter<t>/perplexity-<learner>.jsonl`` and ``iter<t>/pairs-<learner>.jsonl``.

        A learner left with no pairs stops the run (one line naming the file that shows why),
        or, with ``--skip-empty``, is skipped in this iteration with a warning.
        """
        cfg = self.cfg
        stage = f"iter{t}/pairs"
        record = self.book.begin(stage, rule=cfg.filter_rule, k=cfg.filter_k,
                                 max_perplexity=cfg.max_perplexity, max_len=cfg.max_len)
        if record is None:
            counts = {}
            if self.main:
                for learner in self.learners:
                    scored = self._scored_candidates(learner, answers)
                    kept = perplexity_filter(scored, cfg.filter_rule, cfg.filter_k,
                                             cfg.max_perplexity)
                    made = contrastive_pairs(learner, kept,
                                             answers[agent_name(learner, NEG)])
                    self.run.write_rows(f"iter{t}/perplexity-{learner}.jsonl", kept)
                    self.run.write_rows(f"iter{t}/pairs-{learner}.jsonl", made)
                    counts[learner] = {"candidates": len(kept),
                                       "kept": sum(r["kept"] for r in kept), "pairs": len(made)}
                    self.say(f"{stage}: {learner}: {len(kept)} candidates, "
                             f"{counts[learner]['kept']} kept, {len(made)} pairs")
            self.barrier()
            record = self.book.finish(stage, counts=counts)
        made = {learner: read_jsonl(self.path(f"iter{t}/pairs-{learner}.jsonl"))
                for learner in self.learners}
        self.pair_counts[t] = {lrn: len(rows) for lrn, rows in made.items()}
        self.log({"stage": stage, "pairs": self.pair_counts[t]})
        empty = [lrn for lrn, rows in made.items() if not rows
                 and not self.book.records.get(f"iter{t}/dpo/{lrn}", {}).get("skipped")]
        for learner in empty:
            why = (f"iteration {t}: the perplexity filter ({cfg.filter_rule}, k {cfg.filter_k}"
                   + (f", max perplexity {cfg.max_perplexity}" if cfg.max_perplexity else "")
                   + f") left {learner} no contrastive pairs; see "
                   f"iter{t}/perplexity-{learner}.jsonl")
            if not cfg.skip_empty:
                raise W2SError(why + "; loosen the filter, or pass --skip-empty to skip such a "
                               "learner's training for that iteration")
            warnings.warn(why + f"; {learner} is not trained in this iteration (--skip-empty)",
                          stacklevel=2)
            self.log({"stage": stage, "warning": why, "skipped": learner})
        return made

    def _scored_candidates(self, learner: str, answers: dict[str, dict[str, str]]) -> list[dict]:
        """The learner's candidates with their perplexity under its positive agent."""
        from w2s.train.preference import encode, score_items

        rows = candidates(learner, self.q_w2s, answers, self.teachers, self.student)
        base = self.base(learner)
        base.use(agent_name(learner, POS))
        fmt = base.format
        items = [encode(base.tokenizer, fmt.text(r["prompt"]), r["response"],
                        max_len=self.cfg.max_len, chat=fmt.chat, sep=fmt.sep) for r in rows]
        tok = base.tokenizer
        from w2s.models import pad_id

        pad = pad_id(tok)
        sums, counts = score_items(base.model, items, pad) if items else ([], [])
        return [{**r, "perplexity": perplexity(s, n), "tokens": n}
                for r, s, n in zip(rows, sums, counts, strict=True)]

    def train_learners(self, t: int, pairs: dict[str, list[dict]]) -> None:
        """DPO + SFT term (ftx) for every learner's positive agent, continuing its adapter."""
        cfg = self.cfg
        dpo = train_config(cfg.dpo, cfg.seed)
        self.training[t] = {}
        for learner in self.learners:
            agent = agent_name(learner, POS)
            stage = f"iter{t}/dpo/{learner}"
            record = self.book.begin(stage, **self._settings(learner), train=_train(dpo),
                                     beta=cfg.beta, ftx=cfg.ftx, reference=cfg.dpo_reference)
            adapter = self.path(f"iter{t}/adapters/{agent}.safetensors")
            if record is not None:
                self.training[t][learner] = self._restore(stage, record, learner, agent)
                continue
            if not pairs[learner]:  # --skip-empty: the adapter carries over unchanged
                if self.main:
                    self.base(learner).save(agent, adapter)
                self.barrier()
                self.training[t][learner] = self.book.finish(
                    stage, agent=agent, skipped="no pairs", n_examples=0,
                    adapter=str(adapter.relative_to(self.run.path)))
                continue
            self.training[t][learner] = self._train(
                stage, agent, learner, pairs[learner], "dpo", dpo, adapter, beta=cfg.beta,
                ftx=cfg.ftx, reference_adapters=cfg.dpo_reference == "previous")

    # ---- evaluation --------------------------------------------------------------------------
    def evaluate(self, t: int) -> dict:
        """Test answers of the positive agents, judged against the initial strong positive
        agent's (the baseline). t = 0: the initial agents (the baseline itself and the teachers);
        t >= 1: after iteration t. Writes ``<stage>/test-<agent>.jsonl`` and
        ``<stage>/judgments-<learner>.jsonl``."""
        cfg = self.cfg
        where = "init" if t == 0 else f"iter{t}"
        learners = [lrn for lrn in self.learners
                    if cfg.eval_teachers or lrn == self.student]
        answers = {}
        for learner in learners:
            agent = agent_name(learner, POS)
            self._answers(f"{where}/test/{agent}", agent, learner, self.test,
                          f"{where}/test-{agent}.jsonl", 0, branch=True)
            answers[learner] = read_jsonl(self.path(f"{where}/test-{agent}.jsonl"))
        baseline = read_jsonl(self.path(f"init/test-{agent_name(self.student, POS)}.jsonl"))
        stage = f"{where}/eval"
        record = self.book.begin(stage, branch=True, judge=cfg.judge, gold=cfg.gold_judge,
                                 learners=learners)
        if record is None:
            figures: dict[str, Any] = {}
            if self.main:
                for learner in learners:
                    if t == 0 and learner == self.student:  # the baseline against itself
                        figures[learner] = self._gold_only(answers[learner], baseline, where)
                        continue
                    figures[learner] = self._judge(answers[learner], baseline, where, learner)
            record = self.book.finish(stage, figures=figures)
        self.figures[t] = record["figures"]
        if self.main:
            student = record["figures"].get(self.student, {})
            self.say(f"{stage}: student win rate {_fmt(student.get('win_rate'))}, gold reward "
                     f"{_fmt(student.get('gold_reward'))}")
            self.log({"stage": stage, "figures": record["figures"]})
        return record["figures"]

    def _judge(self, candidate: list[dict], baseline: list[dict], where: str,
               learner: str) -> dict:
        from w2s.evaluation import evaluate_winrate

        out: dict[str, Any] = {"win_rate": None, "gold_reward": None}
        if self.judge is not None:
            m = evaluate_winrate(candidate, baseline, self.judge,
                                 run=self.run, judgments=f"{where}/judgments-{learner}.jsonl")
            out.update({k: m.get(k) for k in ("win_rate", "win_rate_se", "wins", "ties",
                                              "losses", "n", "lc_win_rate")})
            if self.gold is self.judge:
                out["gold_reward"] = m["candidate_reward_mean"]
                out["baseline_gold_reward"] = m["baseline_reward_mean"]
        if self.gold is not None and self.gold is not self.judge:
            g = evaluate_winrate(candidate, baseline, self.gold,
                                 run=self.run, judgments=f"{where}/gold-{learner}.jsonl")
            out["gold_reward"] = g["candidate_reward_mean"]
            out["baseline_gold_reward"] = g["baseline_reward_mean"]
            out["gold_win_rate"] = g["win_rate"]
        return out

    def _gold_only(self, rows: list[dict], baseline: list[dict], where: str) -> dict:
        """The baseline's own gold reward (its win rate against itself is 50 by definition)."""
        if self.gold is None:
            return {"win_rate": None, "gold_reward": None}
        scores = self.gold.score([r["prompt"] for r in rows], [r["response"] for r in rows])
        self.run.write_rows(f"{where}/gold-{self.student}.jsonl",
                            [{"id": r["id"], "score": s} for r, s in zip(rows, scores,
                                                                         strict=True)])
        return {"win_rate": None, "gold_reward": float(sum(scores) / len(scores))}

    # ---- metrics -----------------------------------------------------------------------------
    def metrics(self) -> dict:
        """metrics.json: the student's last win rate and gold reward, and every iteration's."""
        T = self.cfg.iterations
        iterations = []
        for t in range(1, T + 1):
            fig = self.figures.get(t, {})
            student = fig.get(self.student, {})
            iterations.append({
                "iteration": t, "win_rate": student.get("win_rate"),
                "win_rate_se": student.get("win_rate_se"),
                "gold_reward": student.get("gold_reward"),
                "teachers": {lrn: {"model": self.models[lrn], "win_rate": f.get("win_rate"),
                                   "gold_reward": f.get("gold_reward")}
                             for lrn, f in fig.items() if lrn != self.student},
                "student": student, "pairs": self.pair_counts.get(t, {}),
                "training": {lrn: {k: r.get(k) for k in ("n_examples", "steps", "final_loss",
                                                         "reward_accuracy", "reward_margin",
                                                         "skipped")}
                             for lrn, r in self.training.get(t, {}).items()}})
        last = iterations[-1]
        initial = self.figures.get(0, {})
        return {"task": self.cfg.task, "teachers": [self.models[t] for t in self.teachers],
                "student": self.models[self.student], "iterations_run": T,
                "win_rate": last["win_rate"], "win_rate_se": last["win_rate_se"],
                "gold_reward": last["gold_reward"],
                "baseline_gold_reward": initial.get(self.student, {}).get("gold_reward"),
                "baseline": "the initial strong positive agent (SFT on the weak teachers' "
                            "answers)",
                "judge": self.judge.identity() if self.judge is not None else None,
                "gold_judge": self.gold.identity() if self.gold is not None else None,
                "initial": initial, "iterations": iterations,
                "n_labeled": len(self.labeled), "n_q_w2s": len(self.q_w2s),
                "n_test_prompts": len(self.test),
                "elapsed_s": round(time.perf_counter() - self.started, 1)}


def base_parameters(model) -> int:
    """Parameters of a model that are not LoRA adapter weights (its base, counted once)."""
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)


def _train(config) -> dict:
    """A TrainConfig as stage settings, without what does not change the result."""
    from w2s.train.config import RESUME_FREE

    return {k: v for k, v in dataclasses.asdict(config).items() if k not in RESUME_FREE}


def _distinct_prompts(rows: list[dict]) -> list[dict]:
    """``{id, prompt}`` of each distinct prompt (first row's id), in order."""
    seen, out = set(), []
    for r in rows:
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            out.append({"id": r["id"], "prompt": r["prompt"]})
    return out


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


# --------------------------------------------------------------------------------------------
# the run


def run(cfg: MACPOConfig) -> dict:
    """Run MACPO in one run directory (resuming an unfinished one); returns metrics.json."""

    from w2s.runs import Run

    plan = check_config(cfg)   # bad settings fail here, before anything exists
    exp = MACPO(cfg, plan)
    exp.load_data()            # a wrong task fails here
    exp.load_judges()          # so does a judge that cannot be built
    exp.load_agents()          # one copy of each base model, its agents as LoRA adapters
    with Run.start(SPEC.name, cfg, headline=SPEC.headline, run_dir=cfg.run_dir, env_extra=exp.environment()) as run:
        # a run that cannot go on (a filter left a learner no pairs) keeps its finished stages
        run.keep("the finished stages; rerun the same command (with the fix) to resume")
        exp.begin(run)
        exp.initialise()                 # weak pos/neg SFT; strong pos/neg SFT
        exp.evaluate(0)                  # the baseline: the initial strong positive
        for t in range(1, cfg.iterations + 1):
            answers = exp.generate(t)    # every agent answers Q_w2s
            pairs = exp.pairs(t, answers)  # perplexity filter, contrastive pairs
            exp.train_learners(t, pairs)  # DPO + SFT term, each positive agent
            exp.evaluate(t)              # win rates against the baseline
        return run.finish(exp.metrics())
