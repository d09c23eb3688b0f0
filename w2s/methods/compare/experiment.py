"""``w2s compare``: plan the entries, run each as an ordinary run under ``<run>/entries/``,
then judge them all in one table (:mod:`w2s.methods.compare.table`).

The flow::

    plan      validate; load the data; decide every entry: runs, or skipped with its reason
              (not selected, a needed entry not selected, one vocabulary needed); build every
              method run's config now, so a bad key fails before anything is written
    shared    the weak aligned model (DPO on the gold pairs, cached), used by every entry
              that needs it
    entries   in ENTRIES order; an entry whose run already holds metrics.json is kept (a
              killed compare resumes at the entry it reached; a half-done entry resumes inside
              its own method from the cache)
    table     table.json / table.md / judgments / plots; then metrics.json, last
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import w2s.tiny  # noqa: F401  (registers the builder of tiny:...+<stage> model names)
from w2s.config import build_config
from w2s.errors import W2SError
from w2s.methods.compare.config import (
    ENTRIES,
    TOKEN_LEVEL,
    CompareConfig,
    entry_recipes,
    recipe_command,
    selected,
    shared_summary,
    validate,
)

USES_WEAK_ALIGNED = ("weak_aligned", "naive_sft", "bon", "cbs", "eft", "wspo")
"""Entries built on the shared weak aligned model (its compute counts toward theirs)."""
SEARCH = ("bon", "cbs", "eft", "genarm")
OWN = {
    "weak_label": {"baseline": "strong (weak-label's start)"},
    "wspo": {"baseline": "strong (WSPO's model before training)"},
    "macpo": {"baseline": "naive SFT on the teachers' answers (MACPO's initial student)"},
    "expo_wspo": {"baseline": "alpha 0 (the WSPO model)"},
    "expo_dpo": {"baseline": "alpha 0 (the ceiling)"},
    **{d: {"win_rate": f"win_rate_{d}", "gold_reward": f"gold_reward_{d}",
           "baseline": "search's own sampling from the strong model"} for d in SEARCH},
}
"""Where each entry's own figures sit in its run's metrics.json, and against what."""
SEARCH_STAGES = {"bon": ("decode_bon",), "cbs": ("decode_cbs",), "eft": ("decode_eft",),
                 "genarm": ("decode_genarm", "genarm_arm")}
"""The compute stages of each decoder in the shared search run (GenARM trains its reward
model in ``genarm_arm``)."""


@dataclass
class Plan:
    cfg: CompareConfig
    data: Any
    status: dict[str, dict] = field(default_factory=dict)   # entry -> {status, reason}
    recipes: dict[str, dict] = field(default_factory=dict)  # run name -> its recipe

    @property
    def runnable(self) -> list[str]:
        return [n for n, s in self.status.items() if s["status"] != "skipped"]


def _vocabulary_reason(cfg: CompareConfig) -> str | None:
    """Why token-level entries cannot run for this pair (None: one vocabulary)."""
    from w2s.models import load_tokenizer, resolve_model
    from w2s.models.resolve import check_available

    weak, strong = resolve_model(cfg.weak_models[0]), resolve_model(cfg.strong)
    for role, model in (("weak", weak), ("strong", strong)):
        check_available(role, model)
    if load_tokenizer(weak).get_vocab() != load_tokenizer(strong).get_vocab():
        return (f"token-level: it adds the weak models' token log-probs to the strong model's, "
                f"and {cfg.weak_models[0]} and {cfg.strong} have different vocabularies")
    return None


def make_plan(cfg: CompareConfig) -> Plan:
    """Every decision before any work: the data, each entry's status, each run's config."""
    from w2s.methods import METHODS
    from w2s.methods.compare.references import load_data

    validate(cfg)
    plan = Plan(cfg, load_data(cfg))
    wanted = selected(cfg)
    vocab = _vocabulary_reason(cfg) if any(n in wanted for n in TOKEN_LEVEL) else None
    for name, entry in ENTRIES.items():
        reason = None
        if name not in wanted:
            reason = "not selected (--methods)"
        elif any(need not in wanted for need in entry.needs):
            reason = f"needs the {', '.join(entry.needs)} entry, which is not selected"
        elif name in TOKEN_LEVEL and vocab:
            reason = vocab
        plan.status[name] = ({"status": "skipped", "reason": reason} if reason else
                             {"status": "pending", "reason": None})
    run_dir = str(cfg.run_dir or "<run>")
    recipes = entry_recipes(cfg, {"weak_aligned": cfg.weak_aligned or "<weak_aligned>",
                                  "run": run_dir, **_sizes(plan.data), "wspo_model": f"{run_dir}/entries/wspo/model",
                                  "ceiling_model": "<ceiling model>"})
    decoders = [d for d in SEARCH if plan.status[d]["status"] == "pending"]
    if decoders:
        recipes["search"]["decoder"] = recipes["search"].get("decoder") or [*decoders, "sample"]
    for run_name in {ENTRIES[n].run for n in plan.runnable if ENTRIES[n].method != "compare"}:
        method = ENTRIES[next(n for n in plan.runnable if ENTRIES[n].run == run_name)].method
        recipe = recipes[run_name]
        try:    # unknown keys and bad values fail now (the placeholders are plain strings)
            build_config(METHODS[method].config, recipe)
        except W2SError as e:
            raise W2SError(f"the {run_name} entry's config: {e}") from None
        plan.recipes[run_name] = recipe
    return plan


def _sizes(data) -> dict[str, int]:
    return {"n_train": len(data.train), "n_test": len(data.test)}


def render_plan(plan: Plan) -> str:
    lines = [f"w2s compare: {plan.cfg.weak} -> {plan.cfg.strong} on {plan.cfg.task}, judge "
             f"{plan.cfg.judge}", f"  {plan.data.meta['n_train']} training pairs, "
             f"{plan.data.meta['n_prompts']} held-out prompts x {plan.cfg.samples_per_prompt}"]
    for name, s in plan.status.items():
        entry = ENTRIES[name]
        line = f"  {name:<13} {entry.group:<9} "
        if s["status"] == "skipped":
            line += f"skipped: {s['reason']}"
        elif entry.method == "compare":
            line += f"runs here ({entry.what})"
        else:
            line += recipe_command(entry.method, f"<run>/entries/{entry.run}.yaml")
        lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the run


def _index(plan: Plan, root: Path) -> dict[str, dict]:
    """entries.json: every entry with its group, method, run, answers file and status."""
    out = {}
    for name, entry in ENTRIES.items():
        out[name] = {"group": entry.group, "method": entry.method, "what": entry.what,
                     "run": f"entries/{entry.run}", "answers": None,
                     "own": OWN.get(name, {}), **plan.status[name]}
        if name in SEARCH:
            out[name]["stages"] = list(SEARCH_STAGES[name])
        if name in USES_WEAK_ALIGNED and not plan.cfg.weak_aligned:
            out[name]["shared"] = {}
        if name == "expo_wspo":
            out[name]["extends"] = ["wspo"]
        if name == "expo_dpo":
            out[name]["extends"] = ["ceiling"]
    old = root / "entries.json"
    if old.is_file():  # resume: what finished stays finished
        for name, stored in json.loads(old.read_text()).items():
            if name in out and stored.get("status") == "ok" and out[name]["status"] != "skipped":
                out[name].update(status="ok", answers=stored["answers"], reason=None)
    return out


def _answers(name: str, root: Path, metrics: dict, recipe: dict | None) -> str:
    """The entry's answers file, relative to the compare run."""
    run = ENTRIES[name].run
    if ENTRIES[name].method in ("compare", "wspo"):
        return f"entries/{run}/generations.jsonl"
    if name == "weak_label":
        return f"entries/{run}/generations-weak-labelled.jsonl"
    if name in SEARCH:
        return f"entries/{run}/generations-{name}.jsonl"
    if name == "macpo":
        return f"entries/{run}/iter{metrics['iterations_run']}/test-student-pos.jsonl"
    return f"entries/{run}/generations/alpha-{metrics['best_extrapolated_alpha']:g}.jsonl"


def _check_resume(cfg: CompareConfig, root: Path) -> None:
    """A run directory of another comparison is refused (its entries answer another question)."""
    import yaml

    from w2s.config import config_to_dict

    stored = root / "config.yaml"
    if not stored.is_file():
        return
    old = yaml.safe_load(stored.read_text()) or {}
    old.pop("method", None)
    new = json.loads(json.dumps(config_to_dict(cfg)))
    for key in ("run_dir", "dry_run", "plots"):
        old.pop(key, None)
        new.pop(key, None)
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise W2SError(f"{root} holds a comparison with other settings ({', '.join(diff)}); "
                       "pass another --run-dir, or the same settings to resume it")


def run(cfg: CompareConfig) -> dict:
    """Run the comparison; returns its metrics.json (with ``--dry-run``, the plan)."""
    from w2s.methods import METHODS
    from w2s.methods.compare.references import References
    from w2s.methods.compare.table import build_table
    from w2s.runs import Run, default_run_dir, write_json

    root = Path(cfg.run_dir) if cfg.run_dir else default_run_dir("compare", cfg)
    cfg.run_dir = str(root)
    plan = make_plan(cfg)
    if cfg.dry_run:
        print(render_plan(plan))
        return {"plan": plan.status, "recipes": plan.recipes}
    _check_resume(cfg, root)
    with Run.start("compare", cfg, run_dir=root, env_extra={"data": plan.data.meta}) as run:
        index = _index(plan, root)
        write_json(root / "entries.json", index)
        run.keep("the finished entries (entries/*); rerun the same command to resume")
        refs = References(cfg, plan.data, log=run.log)
        needs_weak = [n for n in USES_WEAK_ALIGNED if index[n]["status"] == "pending"]
        weak_aligned = refs.weak_aligned() if needs_weak else cfg.weak_aligned
        plan.data.write(root / "data")
        paths = {"weak_aligned": weak_aligned, "run": str(root), **_sizes(plan.data),
                 "wspo_model": str(root / "entries/wspo/model")}
        for run_name in plan.recipes:   # each method run's recipe, runnable on its own (N GPUs)
            if not run_name.startswith("expo") and not (root / "entries" / run_name /
                                                        "metrics.json").is_file():
                _write_recipe(root, run_name, _recipe(plan, run_name, paths, weak_aligned))
        failed = []
        for name in plan.runnable:
            entry, state = ENTRIES[name], index[name]
            if "shared" in state:
                state["shared"] = dict(refs.shared)
            run_dir = root / "entries" / entry.run
            if state["status"] != "ok":
                run.log({"event": "entry", "entry": name, "run": str(run_dir)})
                try:
                    metrics = _run_entry(name, run_dir, refs, plan, paths, weak_aligned,
                                         METHODS)
                except W2SError as e:
                    state.update(status="failed", reason=str(e))
                    failed.append(name)
                    write_json(root / "entries.json", index)
                    continue
                state.update(status="ok", reason=None,
                             answers=_answers(name, root, metrics, plan.recipes.get(entry.run)))
            if name == "ceiling":
                ceiling = json.loads((run_dir / "metrics.json").read_text())
                paths["ceiling_model"] = ceiling["model"]
            write_json(root / "entries.json", index)
        if failed:
            raise W2SError(f"entries {', '.join(failed)} failed ("
                           + "; ".join(f"{n}: {index[n]['reason']}" for n in failed)
                           + "); fix it and rerun with this --run-dir to resume")
        table = build_table(root, cfg.judge, plots=cfg.plots, batch_size=cfg.judge_batch_size)
        print_table(table)
        return run.finish(_metrics(cfg, table, index, refs.shared))


def _run_entry(name: str, run_dir: Path, refs, plan: Plan, paths: dict, weak_aligned,
               methods) -> dict:
    """One entry's run (a reference here, a method through its registry spec): its metrics.
    The search decoders share one run: the first of them runs it, the others find it done."""
    entry = ENTRIES[name]
    if (run_dir / "metrics.json").is_file():
        return json.loads((run_dir / "metrics.json").read_text())
    if entry.method == "compare":
        return refs.run_entry(name, run_dir, weak_aligned)
    recipe = _recipe(plan, entry.run, paths, weak_aligned)
    _write_recipe(run_dir.parent.parent, entry.run, recipe)
    spec = methods[entry.method]
    return spec.run(build_config(spec.config, recipe))


def _recipe(plan: Plan, run_name: str, paths: dict, weak_aligned) -> dict:
    """The recipe of one method run, with the paths known now (the weak aligned model; ExPO's
    aligned model)."""
    if run_name.startswith("expo"):
        recipe = entry_recipes(plan.cfg, paths)[run_name]
    else:
        recipe = dict(plan.recipes[run_name])
        for key in ("weak_aligned", "tuned"):
            if key in recipe:
                recipe[key] = weak_aligned
    recipe["run_dir"] = str(Path(plan.cfg.run_dir) / "entries" / run_name)
    return recipe


def _write_recipe(root: Path, run_name: str, recipe: dict) -> None:
    import yaml

    from w2s.runs import atomic_write_text

    atomic_write_text(root / "entries" / f"{run_name}.yaml",
                      yaml.safe_dump(recipe, sort_keys=False))


def _metrics(cfg: CompareConfig, table: dict, index: dict, shared: dict) -> dict:
    """metrics.json: the table's rows by entry, the best entry, and the compute of every run
    once (the shared weak alignment once too)."""
    from w2s.methods.compare.table import _total, record_of

    rows = [r for r in table["rows"] if r.get("status") == "ok"]
    basis = table["gap_basis"]
    ranked = sorted((r for r in rows if r["entry"] not in ("strong", "ceiling")
                     and r.get(basis) is not None), key=lambda r: -r[basis])
    stages: dict[str, dict] = {}
    for r in rows:
        run = r["run"]
        if run not in stages:   # the whole run, less what no entry is charged (pretraining)
            stages[run] = record_of(_total(Path(cfg.run_dir) / run / "metrics.json"))
    for name, figures in shared.items():
        stages[f"shared/{name}"] = record_of(figures)
    total = {k: sum(s.get(k, 0) for s in stages.values())
             for k in ("wall_s", "forward_tokens", "backward_tokens", "generated_tokens")}
    total["peak_memory_bytes"] = max((s.get("peak_memory_bytes", 0) for s in stages.values()),
                                     default=0)
    return {**shared_summary(cfg), "gap_basis": basis, "judge_identity": table["judge"],
            "best_entry": ranked[0]["entry"] if ranked else None,
            "table": {r["entry"]: {k: r.get(k) for k in
                                   ("status", "reason", "win_rate", "win_rate_se",
                                    "gold_reward", "gap_recovered", "gap_recovered_reason")}
                      for r in table["rows"]},
            "skipped": {n: e["reason"] for n, e in index.items() if e["status"] == "skipped"},
            "gold_reward_reason": "per entry in table.json (the comparison has no single one)",
            "compute": {"stages": stages, "total": total}}


def print_table(table: dict) -> None:
    """The table on the terminal (rich), as table.md has it."""
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from w2s.methods.compare.table import COLUMNS, cells

    out = Table(title=f"w2s compare: win rate vs the strong model, judge "
                      f"{escape(str(table['judge'].get('judge')))}")
    for col in COLUMNS:
        out.add_column(col)
    for row in table["rows"]:
        out.add_row(*[escape(c) for c in cells(row)])
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(out)
    for note in table["notes"]:
        console.print(f"- {escape(note)}")
