"""``w2s report RUN_DIR...``: one markdown table of the runs' headline figures, and plots.

Per run: method, status, PGR, win rate (with its standard error), deception score, and the
method's own scalar figures. Plots (PNG, matplotlib; skipped with a note when it is missing):

- ``pgr.png``: PGR per (weak, strong) pair, with the paired-bootstrap 95% CI when the run keeps
  ``predictions.jsonl`` (recomputed from it) or per-pair figures in ``metrics["pairs"]``;
- ``win_rate.png``: win rate +- standard error per run;
- ``gold_reward.png``: mean gold reward of the candidate and the baseline per run, for runs
  judged by a reward (``candidate_reward_mean`` / ``baseline_reward_mean``, or ``gold_reward``);
- ``iterations.png``: win rate and gold reward per iteration, for runs whose metrics carry
  ``iterations`` (a list of ``{"iteration", "win_rate", "gold_reward", ...}``, e.g. MACPO).

Only what the runs recorded is shown; a run without metrics.json is listed as incomplete.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from w2s.errors import W2SError
from w2s.evaluation.pgr import pgr_from_predictions
from w2s.runs import SCHEMA_KEYS, atomic_write_text, read_jsonl

SKIP_FIGURES = {*SCHEMA_KEYS, "win_rate_se"}
"""Keys that are not listed among a run's own figures (the schema's own columns)."""


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return None if isinstance(v, float) and math.isnan(v) else float(v)


def fmt(v: Any) -> str:
    """A table cell: ``-`` for missing, 4 significant digits for floats."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pairs(path: Path, metrics: dict) -> dict[str, dict]:
    """PGR per pair: recomputed from predictions.jsonl when present, else metrics['pairs']."""
    pred = path / "predictions.jsonl"
    if pred.is_file():
        try:
            return {p or path.name: r for p, r in
                    pgr_from_predictions(read_jsonl(pred), n_boot=200, seed=0).items()}
        except W2SError:
            pass  # not PGR predictions: fall back to what metrics.json says
    pairs = metrics.get("pairs")
    if isinstance(pairs, dict):
        return {str(k): v for k, v in pairs.items() if isinstance(v, dict) and "pgr" in v}
    if isinstance(pairs, list):
        return {str(v.get("pair", i)): v for i, v in enumerate(pairs)
                if isinstance(v, dict) and "pgr" in v}
    return {}


def load_run(path: str | os.PathLike) -> dict[str, Any]:
    """One run directory -> ``{"run", "name", "method", "variant", "status", "headline" ({key: value} of
    the method's headline figures), "pgr", "win_rate", "win_rate_se", "figures", "pairs",
    "iterations", "gold", "baseline_gold", "decoders"}``, read from the shared metrics.json
    schema (:data:`w2s.runs.SCHEMA_KEYS`)."""
    path = Path(path)
    if not path.is_dir():
        raise W2SError(f"{path} is not a directory; pass run directories (runs/<method>/<run>)")
    mpath, cpath = path / "metrics.json", path / "config.yaml"
    if not mpath.is_file() and not cpath.is_file():
        raise W2SError(f"{path} is not a run directory (no metrics.json or config.yaml)")
    if mpath.is_file():
        try:
            metrics = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise W2SError(f"{mpath}:{e.lineno}: not valid JSON ({e.msg})") from None
    else:
        import yaml

        cfg = yaml.safe_load(cpath.read_text()) or {}
        metrics = {"method": cfg.get("method"), "status": "incomplete"}
    headline = [str(k) for k in metrics.get("headline") or []]
    figures = {k: v for k, v in metrics.items()
               if k not in SKIP_FIGURES and k not in headline and _number(v) is not None}
    iterations = metrics.get("iterations")
    decoders = metrics.get("decoders")  # w2s search: every decoder of the run side by side
    decoders = ({str(name): {"win_rate": _number(d.get("win_rate_vs_sample")),
                             "win_rate_se": _number(d.get("win_rate_se")),
                             "gold": _number(d.get("gold_reward_mean"))}
                 for name, d in decoders.items() if isinstance(d, dict)}
                if isinstance(decoders, dict) else {})
    return {"run": str(path), "name": path.name, "method": metrics.get("method"),
            "variant": metrics.get("variant"), "status": metrics.get("status", "ok"),
            "headline": {k: _number(metrics.get(k)) for k in headline},
            "pgr": _number(metrics.get("pgr")), "win_rate": _number(metrics.get("win_rate")),
            "win_rate_se": _number(metrics.get("win_rate_se")), "figures": figures,
            "pairs": _pairs(path, metrics), "gold": _number(metrics.get("gold_reward")),
            "baseline_gold": _number(metrics.get("baseline_gold_reward")),
            "iterations": [it for it in iterations if isinstance(it, dict)]
            if isinstance(iterations, list) else [], "decoders": decoders}


def win_rate_cell(run: dict) -> str:
    """``62.5 ± 3.1`` (or just the value without a standard error, ``-`` when missing)."""
    if run["win_rate"] is None:
        return "-"
    se = run.get("win_rate_se")
    return f"{run['win_rate']:.1f}" + (f" ± {se:.1f}" if se is not None else "")


def columns(runs: list[dict], headline: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The table's columns: run, method, status, the headline figures (``headline``, e.g. the
    registry's; default: those the runs record), figures."""
    keys = list(headline) if headline is not None else list(
        dict.fromkeys(k for r in runs for k in r["headline"]))
    return ["run", "method", "status", *keys, "figures"]


def table_rows(runs: list[dict], headline: list[str] | tuple[str, ...] | None = None
               ) -> list[dict[str, str]]:
    """The report table as strings, one dict per run (keys: :func:`columns`)."""
    out = []
    keys = columns(runs, headline)[3:-1]
    for r in runs:
        figures = {k: v for k, v in r["figures"].items() if k not in keys}
        method = fmt(r["method"]) + (f" ({r['variant']})" if r.get("variant") else "")
        row = {"run": r["name"], "method": method, "status": fmt(r["status"])}
        for key in keys:
            value = r["headline"].get(key, r.get(key) if key in ("pgr", "win_rate") else None)
            row[key] = win_rate_cell(r) if key == "win_rate" else fmt(value)
        row["figures"] = ", ".join(f"{k}={fmt(v)}" for k, v in figures.items()) or "-"
        out.append(row)
    return out


def markdown_table(rows: list[dict[str, str]], columns: list[str] | None = None) -> str:
    """A GitHub markdown table (``|`` in cells escaped); columns default to the rows' keys."""
    columns = columns or (list(rows[0]) if rows else ["run"])
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(esc(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# plots


def _label(run: dict) -> str:
    return f"{run['method'] or '?'}\n{run['name'][:24]}"


def _per_decoder(run: dict) -> list[dict]:
    """The bars a run contributes to the win-rate and gold-reward plots: one per decoder for
    a search run (the baseline ``sample`` has gold reward only), else the run itself."""
    if not run.get("decoders"):
        return [run]
    return [{**run, "name": f"{run['name'][:16]}:{name}", "win_rate": d["win_rate"],
             "win_rate_se": d["win_rate_se"], "gold": d["gold"], "baseline_gold": None}
            for name, d in run["decoders"].items()]


def make_plots(runs: list[dict], out_dir: Path) -> tuple[list[Path], str | None]:
    """Write the PNG plots that the runs have data for; ``(paths, note)`` where note says why
    plots were skipped (matplotlib missing), else None."""
    from w2s.evaluation.plots import MISSING, pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return [], f"plots skipped: {MISSING}"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        written.append(save_figure(fig, out_dir / name))

    bars = [(f"{r['name'][:20]}\n{pair[:28]}" if len(r["pairs"]) > 1 or pair != r["name"]
             else r["name"][:24], v) for r in runs for pair, v in r["pairs"].items()]
    bars += [(r["name"][:24], {"pgr": r["pgr"]}) for r in runs if not r["pairs"]
             and r["pgr"] is not None]
    bars = [(label, v) for label, v in bars if _number(v.get("pgr")) is not None]
    if bars:
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(bars) + 2), 4))
        ys = [v["pgr"] for _, v in bars]
        err = [[max(0.0, y - v["ci_low"]) if _number(v.get("ci_low")) is not None else 0
                for y, (_, v) in zip(ys, bars, strict=True)],
               [max(0.0, v["ci_high"] - y) if _number(v.get("ci_high")) is not None else 0
                for y, (_, v) in zip(ys, bars, strict=True)]]
        ax.bar(range(len(bars)), ys, yerr=err, capsize=4, color="tab:blue")
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(1, color="gray", lw=0.8, ls="--")
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
        ax.set_ylabel("PGR (95% CI)")
        ax.set_title("performance gap recovered")
        save(fig, "pgr.png")

    # a search run is one bar per decoder (CBS, best-of-N, EFT against sampling), other runs one
    wr = [bar for r in runs for bar in _per_decoder(r) if bar["win_rate"] is not None]
    if wr:
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(wr) + 2), 4))
        ax.bar(range(len(wr)), [r["win_rate"] for r in wr],
               yerr=[r["win_rate_se"] or 0 for r in wr], capsize=4, color="tab:green")
        ax.axhline(50, color="gray", lw=0.8, ls="--")
        ax.set_ylim(0, 100)
        ax.set_xticks(range(len(wr)), [_label(r) for r in wr], fontsize=7)
        ax.set_ylabel("win rate vs baseline (± s.e.)")
        ax.set_title("win rate")
        save(fig, "win_rate.png")

    gold = [bar for r in runs for bar in _per_decoder(r) if bar["gold"] is not None]
    if gold:
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(gold) + 2), 4))
        xs = list(range(len(gold)))
        ax.bar([x - 0.2 for x in xs], [r["gold"] for r in gold], width=0.4, label="candidate")
        base = [r["baseline_gold"] for r in gold]
        if any(b is not None for b in base):
            ax.bar([x + 0.2 for x in xs], [b if b is not None else 0 for b in base], width=0.4,
                   label="baseline")
        ax.set_xticks(xs, [_label(r) for r in gold], fontsize=7)
        ax.set_ylabel("mean gold reward")
        ax.legend()
        ax.set_title("gold reward")
        save(fig, "gold_reward.png")

    iters = [r for r in runs if r["iterations"]]
    if iters:
        keys = [k for k in ("win_rate", "gold_reward") if any(
            _number(it.get(k)) is not None for r in iters for it in r["iterations"])]
        if keys:
            fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
            for ax, key in zip(axes[0], keys, strict=True):
                for r in iters:
                    pts = [(it.get("iteration", i), _number(it.get(key)))
                           for i, it in enumerate(r["iterations"])]
                    pts = [(x, y) for x, y in pts if y is not None]
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                                label=r["name"][:24])
                ax.set_xlabel("iteration")
                ax.set_ylabel(key.replace("_", " "))
                ax.legend(fontsize=7)
            save(fig, "iterations.png")
    return written, None


def write_report(run_dirs: list[str | os.PathLike], out: str | os.PathLike = "report.md",
                 *, plots: bool = True, headline: list[str] | tuple[str, ...] | None = None
                 ) -> dict[str, Any]:
    """Read the runs, write the markdown report to ``out`` and the plots beside it.

    ``headline``: the headline columns (``w2s report`` passes every method's, from the
    registry); default: those the runs record. Returns ``{"runs", "table", "columns",
    "markdown" (the path), "plots" (paths), "note"}``; ``note`` says why plots were skipped.
    """
    if not run_dirs:
        raise W2SError("give at least one run directory")
    runs = [load_run(p) for p in run_dirs]
    out = Path(out)
    if out.suffix.lower() != ".md":
        raise W2SError(f"--out {out}: the report is markdown; name it *.md")
    written, note = make_plots(runs, out.parent) if plots else ([], None)
    rows = table_rows(runs, headline)
    parts = ["# w2s report", "", markdown_table(rows), "",
             "Win rate: mean preference x 100 against the baseline (± standard error); "
             "PGR: (w2s - weak) / (ceiling - weak).", ""]
    for r in runs:
        lc = r["figures"].get("lc_win_rate")
        if lc is not None:
            parts.append(f"- {r['name']}: length-controlled win rate {lc:.1f} (a minimal "
                         "length GLM, not AlpacaEval 2's LC figure)")
    if written:
        parts += ["", "## Plots", ""]
        parts += [f"![{p.stem}]({os.path.relpath(p, out.parent)})" for p in written]
    if note:
        parts += ["", f"_{note}_"]
    atomic_write_text(out, "\n".join(parts).rstrip() + "\n")
    return {"runs": runs, "table": rows, "columns": columns(runs, headline), "markdown": out,
            "plots": written, "note": note}
