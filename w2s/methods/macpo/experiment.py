"""The steps of ``w2s macpo`` in the order of the paper (see :mod:`w2s.methods.macpo` for the
method): :class:`MACPO` has one method per visible step -- ``load_data``, ``load_agents``,
``initialise``, ``generate``, ``pairs``, ``train_learners``, ``evaluate``, ``metrics`` -- and
:func:`run` calls them. The pieces live beside it: the pure steps (who learns from whom, the
perplexity filter, the pairs) in :mod:`~w2s.methods.macpo.pairing`, the agents (LoRA adapters
over one copy of each base model) in :mod:`~w2s.methods.macpo.agents`, and the cached stages
every expensive step runs as in :mod:`~w2s.methods.macpo.stages`.

The run directory (every file a step wrote, so each step can be checked)::

    agents.json                  who is who: learner -> model, adapters, prompt format
    data/labeled.jsonl           the labeled half (teachers' SFT), data/q_w2s.jsonl the
                                 unlabeled prompts, data/test.jsonl the test prompts
    log.jsonl                    one line per stage: finished (built now) or finished earlier
                                 (found in the cache), with its cache key; training steps
    init/adapters/<agent>.safetensors      each agent's adapter after initialisation
    init/gen-teacher1-pos.jsonl  a teacher's answers to Q_w2s (pos: the student's SFT data;
                                 neg: the student negative agent's SFT data)
    init/sft-answers-student-pos.jsonl   every candidate SFT row (a teacher's answer), whether
                                 student_sft_answers kept it (and its perplexity)
    init/sft-student-pos.jsonl   the kept answers: the student's SFT rows (with their teacher)
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

metrics.json's ``compute.stages`` lists every stage too, ``cached`` where it was found.

Resuming. Every stage is a cached stage (:mod:`~w2s.methods.macpo.stages`): its key chains
the settings it depends on through every earlier stage (change an SFT setting and everything
from that stage on is redone; change the judge and only the evaluations are). A rerun of the
same command, into the same run directory or a new one, finds the finished stages in the cache
(loading their adapters, copying their files into the run directory) and continues where the
last one stopped; a training interrupted mid-way resumes from its loop checkpoints.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from w2s.errors import W2SError
from w2s.methods.macpo import SPEC
from w2s.methods.macpo.agents import Base, base_parameters
from w2s.methods.macpo.config import MACPOConfig, check_config, train_config
from w2s.methods.macpo.pairing import (
    NEG,
    POS,
    agent_name,
    candidates,
    contrastive_pairs,
    perplexity_filter,
    pick_sft_answers,
    sft_candidates,
)
from w2s.methods.macpo.stages import Stages
from w2s.runs import content_hash, read_jsonl

CHAIN_ROOT = "macpo-v1"
"""The start of every run's stage chain: change it when a stage's code changes its result."""


class MACPO(Stages):
    """One ``w2s macpo`` run: the data, the agents, and one method per step."""

    def __init__(self, cfg: MACPOConfig, plan: dict):
        super().__init__(cfg)
        self.plan = plan
        self.teachers: list[str] = plan["teachers"]
        self.student: str = plan["student"]
        self.learners: list[str] = plan["learners"]
        self.models = {**dict(zip(self.teachers, plan["weak"], strict=True)),
                       self.student: plan["strong"]}
        self.figures: dict[int, dict] = {}   # iteration -> evaluation figures
        self.training: dict[int, dict] = {}  # iteration -> learner -> training record
        self.pair_counts: dict[int, dict] = {}
        self.baseline: list[dict] = []       # the initial strong positive agent's test answers
        self.started = time.perf_counter()

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
        """Attach the run directory (agents.json, the data files) and root the stage chain in
        the data and the settings that drew it."""
        self.run = run
        run.write_json("agents.json", self.agents_table())
        run.write_rows("data/labeled.jsonl", self.labeled)
        run.write_rows("data/q_w2s.jsonl", self.q_w2s)
        run.write_rows("data/test.jsonl", self.test)
        cfg = self.cfg
        self.chain = content_hash([CHAIN_ROOT, {"task": cfg.task, "n_train": cfg.n_train,
                                                "n_test": cfg.n_test, "seed": cfg.seed,
                                                "data": self.fingerprints}])
        self.log({"stage": "data", "n_labeled": len(self.labeled), "n_q_w2s": len(self.q_w2s),
                  "n_test": len(self.test)})

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
                rows = [{"prompt": r["prompt"], "response": r[field]} for r in self.labeled]
                self.fit(f"init/sft/{agent}", agent, teacher, rows, "sft", sft,
                         settings={"data": field})

        weak_answers = {agent: _by_id(self.answers(f"init/gen/{agent}", agent, teacher,
                                                   self.q_w2s, f"init/gen-{agent}.jsonl", 0))
                        for teacher in self.teachers
                        for agent in (agent_name(teacher, POS), agent_name(teacher, NEG))}

        chosen = self.student_sft_data(weak_answers)
        for polarity in (POS, NEG):
            agent = agent_name(self.student, polarity)
            tcfg = sft if polarity == POS else train_config(
                cfg.sft, cfg.seed, epochs=cfg.strong_neg_epochs)
            rows = chosen[polarity]
            if not rows:
                raise W2SError(f"the weak {polarity} agents gave no non-empty answer to the "
                               f"{len(self.q_w2s)} prompts of Q_w2s, so the strong {polarity} "
                               "agent has nothing to learn from; see init/gen-*.jsonl (raise "
                               "--max-new-tokens or train the teachers longer)")
            # the strong negative agent continues from the strong positive one
            self.fit(f"init/sft/{agent}", agent, self.student, rows, "sft", tcfg,
                     rows_file=f"init/sft-{agent}.jsonl",
                     start=agent_name(self.student, POS) if polarity == NEG else None)

    def student_sft_data(self, weak_answers: dict[str, dict[str, str]]) -> dict[str, list[dict]]:
        """The strong agents' initial SFT rows, per polarity: of the weak ``pos`` (``neg``)
        agents' non-empty answers to each Q_w2s prompt, all, or one drawn with the seed, or the
        one least perplexing under the student before its SFT (``student_sft_answers``). Writes
        ``init/sft-answers-student-<pos|neg>.jsonl``: every candidate, its teacher, whether it
        was kept (and, for lowest_perplexity, its perplexity)."""
        cfg = self.cfg
        rule = cfg.student_sft_answers
        files = {pol: f"init/sft-answers-{agent_name(self.student, pol)}.jsonl"
                 for pol in (POS, NEG)}
        with self.stage("init/sft-answers", rule=rule,
                        scored=self._settings(self.student) if rule == "lowest_perplexity"
                        else None) as st:
            if not st.done:
                if self.main:
                    for polarity, file in files.items():
                        rows = sft_candidates(self.q_w2s, [agent_name(t, polarity)
                                                           for t in self.teachers], weak_answers)
                        if rule == "lowest_perplexity":  # under the student's base model
                            rows = self.perplexities(self.student, rows, base=True)
                        self.run.write_rows(file, pick_sft_answers(rows, rule, cfg.seed,
                                                                   salt=polarity))
                self.publish(st, list(files.values()))
        kept = {pol: [{k: r[k] for k in ("id", "prompt", "response", "teacher")}
                      for r in read_jsonl(self.output(st, file)) if r["kept"]]
                for pol, file in files.items()}
        self.log({"stage": "init/sft-answers", "rule": rule,
                  "rows": {pol: len(rows) for pol, rows in kept.items()}})
        return kept

    # ---- one iteration -----------------------------------------------------------------------
    def generate(self, t: int) -> dict[str, dict[str, str]]:
        """Every agent (each positive as it is now, each negative) answers Q_w2s."""
        return {agent: _by_id(self.answers(f"iter{t}/gen/{agent}", agent,
                                           agent.rsplit("-", 1)[0], self.q_w2s,
                                           f"iter{t}/gen-{agent}.jsonl", t))
                for agent in self.agents()}

    def pairs(self, t: int, answers: dict[str, dict[str, str]]) -> dict[str, list[dict]]:
        """Per learner: score every unfamiliar positive answer's perplexity under the learner's
        positive agent, filter, and pair each kept one with the learner's own negative answer.
        Writes ``iter<t>/perplexity-<learner>.jsonl`` and ``iter<t>/pairs-<learner>.jsonl``.

        A learner left with no pairs stops the run (one line naming the file that shows why),
        or, with ``--skip-empty``, is skipped in this iteration with a warning.
        """
        cfg = self.cfg
        name = f"iter{t}/pairs"
        files = [f"iter{t}/{what}-{learner}.jsonl" for learner in self.learners
                 for what in ("perplexity", "pairs")]
        with self.stage(name, rule=cfg.filter_rule, k=cfg.filter_k,
                        max_perplexity=cfg.max_perplexity, max_len=cfg.max_len) as st:
            if not st.done:
                counts = {}
                if self.main:
                    for learner in self.learners:
                        scored = self.perplexities(learner, candidates(
                            learner, self.q_w2s, answers, self.teachers, self.student))
                        kept = perplexity_filter(scored, cfg.filter_rule, cfg.filter_k,
                                                 cfg.max_perplexity)
                        made = contrastive_pairs(learner, kept,
                                                 answers[agent_name(learner, NEG)])
                        self.run.write_rows(f"iter{t}/perplexity-{learner}.jsonl", kept)
                        self.run.write_rows(f"iter{t}/pairs-{learner}.jsonl", made)
                        counts[learner] = {"candidates": len(kept),
                                           "kept": sum(r["kept"] for r in kept),
                                           "pairs": len(made)}
                        self.say(f"{name}: {learner}: {len(kept)} candidates, "
                                 f"{counts[learner]['kept']} kept, {len(made)} pairs")
                self.publish(st, files, counts=counts)
        made = {learner: read_jsonl(self.output(st, f"iter{t}/pairs-{learner}.jsonl"))
                for learner in self.learners}
        self.pair_counts[t] = {lrn: len(rows) for lrn, rows in made.items()}
        self.log({"stage": name, "pairs": self.pair_counts[t]})
        for learner in [lrn for lrn, rows in made.items() if not rows]:
            why = (f"iteration {t}: the perplexity filter ({cfg.filter_rule}, k {cfg.filter_k}"
                   + (f", max perplexity {cfg.max_perplexity}" if cfg.max_perplexity else "")
                   + f") left {learner} no contrastive pairs; see "
                   f"iter{t}/perplexity-{learner}.jsonl")
            if not cfg.skip_empty:
                raise W2SError(why + "; loosen the filter, or pass --skip-empty to skip such a "
                               "learner's training for that iteration")
            warnings.warn(why + f"; {learner} is not trained in this iteration (--skip-empty)",
                          stacklevel=2)
            self.log({"stage": name, "warning": why, "skipped": learner})
        return made

    def train_learners(self, t: int, pairs: dict[str, list[dict]]) -> None:
        """DPO + SFT term (ftx) for every learner's positive agent, continuing its adapter (a
        learner without pairs, with ``--skip-empty``, keeps it unchanged)."""
        cfg = self.cfg
        dpo = train_config(cfg.dpo, cfg.seed)
        self.training[t] = {
            learner: self.fit(f"iter{t}/dpo/{learner}", agent_name(learner, POS), learner,
                              pairs[learner], "dpo", dpo,
                              settings={"beta": cfg.beta, "ftx": cfg.ftx,
                                        "reference": cfg.dpo_reference},
                              dpo={"beta": cfg.beta, "ftx": cfg.ftx,
                                   "reference_adapters": cfg.dpo_reference == "previous"})
            for learner in self.learners}

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
            answers[learner] = self.answers(f"{where}/test/{agent}", agent, learner, self.test,
                                            f"{where}/test-{agent}.jsonl", 0, branch=True)
        if t == 0:
            self.baseline = answers[self.student]
        name = f"{where}/eval"
        with self.stage(name, branch=True, judge=cfg.judge, gold=cfg.gold_judge,
                        learners=learners, answers=content_hash([answers, self.baseline])) as st:
            if not st.done:
                figures: dict[str, Any] = {}
                files: list[str] = []
                if self.main:
                    for learner in learners:
                        if t == 0 and learner == self.student:  # the baseline against itself
                            figures[learner], written = self.gold_only(answers[learner], where,
                                                                       learner)
                        else:
                            figures[learner], written = self.judged(answers[learner],
                                                                    self.baseline, where, learner)
                        files += written
                self.publish(st, files, figures=figures)
        self.figures[t] = self.record(st)["figures"]
        student = self.figures[t].get(self.student, {})
        self.say(f"{name}: student win rate {_fmt(student.get('win_rate'))}, gold reward "
                 f"{_fmt(student.get('gold_reward'))}")
        self.log({"stage": name, "figures": self.figures[t]})
        return self.figures[t]

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


def _by_id(rows: list[dict]) -> dict[str, str]:
    """Answer rows as ``{prompt id: answer}``."""
    return {r["id"]: r["response"] for r in rows}


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
    """Run MACPO in one run directory; returns metrics.json. Stages finished by an earlier
    run (this run directory's or another's) come from the cache."""
    from w2s.runs import Run

    plan = check_config(cfg)   # bad settings fail here, before anything exists
    exp = MACPO(cfg, plan)
    exp.load_data()            # a wrong task fails here
    exp.load_judges()          # so does a judge that cannot be built
    exp.load_agents()          # one copy of each base model, its agents as LoRA adapters
    with Run.start(SPEC.name, cfg, headline=SPEC.headline, run_dir=cfg.run_dir,
                   env_extra=exp.environment()) as run:
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
