"""The comparison's table, from the files the entries stored: what ``w2s compare`` writes at
the end and ``w2s eval compare RUN_DIR`` recomputes.

Per entry: its answers (``entries.json`` names the file) are paired with the strong model's
answers to the same prompt (the k-th answer of a prompt with the strong model's k-th; an entry
that answers a prompt once pairs with the first), judged by the ONE judge of the comparison,
and turned into

- ``win_rate`` / ``win_rate_se`` against the strong model as it is (percentage points, SE
  clustered by prompt; the strong model's own row is 50 by definition);
- ``gold_reward``: the mean judge score of the entry's paired answers (reward judges only);
- ``gap_recovered`` = (entry - strong) / (ceiling - strong), on the gold reward where there is
  one, else on the win rate; null with ``gap_recovered_reason`` when the ceiling did not run or
  does not beat the strong model;
- ``compute``: from the entry run's own ``compute`` record (training tokens = tokens through a
  backward pass, generated tokens, wall time, peak memory), plus the shared stages it used
  (the weak alignment), and ExPO's aligned model's run;
- ``own``: the entry's method's own headline figures, against its own baseline (named), so the
  table can be checked against each run.

Entries that did not run keep their row with ``status`` and ``reason``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from w2s.errors import W2SError

NOT_COUNTED = ("pretrain",)
"""Compute stages no entry is charged for: the one-time pretraining of an in-process tiny
model (``tiny:...+<corpus>``) makes the models every entry starts from; it is not a method's
cost (and it falls to whichever entry loads the model first)."""
COMPUTE_KEYS = ("training_tokens", "forward_tokens", "generated_tokens", "wall_s",
                "peak_memory_bytes")


def read_rows(path: Path) -> list[dict]:
    """``{id, prompt, response, ...}`` rows of a stored answers file (w2s's reader: one-line
    errors naming the file and line)."""
    from w2s.evaluation.generations import read_generations

    return read_generations(path)


def pair_with_base(entry_rows: list[dict], base_rows: list[dict]
                   ) -> tuple[list[tuple[str, dict, dict]], int]:
    """``([(base id, entry row, base row)], unmatched)``: the k-th answer of a prompt with the
    strong model's k-th answer of that prompt; entry answers beyond the base's are unmatched."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in base_rows:
        by_prompt[row["prompt"]].append(row)
    used: dict[str, int] = defaultdict(int)
    pairs, unmatched = [], 0
    for row in entry_rows:
        k, candidates = used[row["prompt"]], by_prompt.get(row["prompt"], [])
        if k < len(candidates):
            used[row["prompt"]] += 1
            pairs.append((candidates[k]["id"], row, candidates[k]))
        else:
            unmatched += 1
    return pairs, unmatched


def judge_entry(judge, entry_rows: list[dict], base_rows: list[dict]) -> tuple[dict, list[dict]]:
    """The win-rate figures of one entry against the strong model, and its judgment rows."""
    from w2s.evaluation.winrate import judge_pairs, outcome_counts, win_rate

    pairs, unmatched = pair_with_base(entry_rows, base_rows)
    if not pairs:
        raise W2SError("an entry's answers share no prompt with the strong model's; they must "
                       "answer the same held-out prompts")
    prefs, rows = judge_pairs(judge, pairs)
    value, se = win_rate(prefs, clusters=[r["prompt"] for r in rows])
    out = {"win_rate": value, "win_rate_se": se if se == se else None, **outcome_counts(prefs),
           "unmatched": unmatched, "n_prompts": len({r["prompt"] for r in rows})}
    out["gold_reward"] = (float(sum(r["candidate_score"] for r in rows) / len(rows))
                          if judge.kind == "reward" else None)
    return out, rows


def _total(metrics_path: Path, stages: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A run's compute (every stage, or those named), in the table's keys."""
    record = json.loads(metrics_path.read_text()).get("compute") or {}
    every = record.get("stages", {})
    parts = {k: v for k, v in every.items() if k not in NOT_COUNTED}
    counted = ("wall_s", "forward_tokens", "backward_tokens", "generated_tokens")
    if stages is not None:   # a run shared by several entries: this entry's stages only
        parts = {k: v for k, v in parts.items() if any(k.startswith(s) for s in stages)}
        total = {k: sum(p.get(k, 0) for p in parts.values()) for k in counted}
        total["peak_memory_bytes"] = max((p.get("peak_memory_bytes", 0)
                                          for p in parts.values()), default=0)
    else:                    # the whole run (its wall time too), less what is not counted
        total = dict(record.get("total", {}))
        for name in NOT_COUNTED:
            for k in counted:
                total[k] = total.get(k, 0) - every.get(name, {}).get(k, 0)
    return figures_of(total, [k for k, v in parts.items() if v.get("cached")])


def figures_of(record: dict, cached=()) -> dict[str, Any]:
    """A :mod:`w2s.compute` record (a stage or a total) in the table's keys: training tokens
    are the tokens through a backward pass."""
    return {"training_tokens": int(record.get("backward_tokens", 0)),
            "forward_tokens": int(record.get("forward_tokens", 0)),
            "generated_tokens": int(record.get("generated_tokens", 0)),
            "wall_s": float(record.get("wall_s", 0.0)),
            "peak_memory_bytes": int(record.get("peak_memory_bytes", 0)),
            "cached_stages": sorted(cached)}


def record_of(figures: dict) -> dict[str, Any]:
    """The table's compute keys back in :mod:`w2s.compute`'s (metrics.json's ``compute``)."""
    return {"wall_s": figures["wall_s"], "forward_tokens": figures["forward_tokens"],
            "backward_tokens": figures["training_tokens"],
            "generated_tokens": figures["generated_tokens"],
            "peak_memory_bytes": figures["peak_memory_bytes"]}


def _add(a: dict, b: dict) -> dict:
    out = dict(a)
    for k in ("training_tokens", "forward_tokens", "generated_tokens", "wall_s"):
        out[k] = a.get(k, 0) + b.get(k, 0)
    out["peak_memory_bytes"] = max(a.get("peak_memory_bytes", 0), b.get("peak_memory_bytes", 0))
    out["cached_stages"] = sorted(set(a.get("cached_stages", [])) | set(b.get("cached_stages", [])))
    return out


def entry_compute(run_dir: Path, entry: dict, entries: dict[str, dict]) -> dict:
    """One entry's compute: its run's record (only its own stages when it shares the run with
    other entries), plus what it used: shared stages, the runs it extends."""
    metrics = run_dir / entry["run"] / "metrics.json"
    total = _total(metrics, tuple(entry["stages"]) if entry.get("stages") else None)
    uses = []
    for name, record in (entry.get("shared") or {}).items():
        total = _add(total, record)
        uses.append(name)
    for other in entry.get("extends", []):
        if other in entries and entries[other].get("status") == "ok":
            total = _add(total, entry_compute(run_dir, entries[other], entries))
            uses.append(other)
    total["includes"] = uses
    return total


def own_figures(run_dir: Path, entry: dict) -> dict[str, Any]:
    """The entry's method's own figures: ``{win_rate, baseline, gold_reward}`` as its run's
    metrics.json states them."""
    m = json.loads((run_dir / entry["run"] / "metrics.json").read_text())
    own = entry.get("own") or {}
    return {"win_rate": m.get(own.get("win_rate", "win_rate")),
            "baseline": own.get("baseline"),
            "gold_reward": m.get(own.get("gold_reward", "gold_reward"))}


def build_table(run_dir: Path, judge_spec: str, *, judge=None, write: bool = True,
                plots: bool = True, **judge_options: Any) -> dict[str, Any]:
    """The table of the compare run at ``run_dir`` from its stored files (``entries.json``,
    each entry's answers and metrics.json); written as table.json, table.md, judgments/ and
    the plots unless ``write`` is False. Returns the table."""
    from w2s.evaluation.judges import build_judge
    from w2s.runs import atomic_write_text, write_json

    run_dir = Path(run_dir)
    index = run_dir / "entries.json"
    if not index.is_file():
        raise W2SError(f"{run_dir} has no entries.json: not a `w2s compare` run directory")
    entries = json.loads(index.read_text())
    strong = entries.get("strong", {})
    if strong.get("status") != "ok":
        raise W2SError(f"{run_dir}: the strong entry has not finished; rerun `w2s compare` "
                       "with this --run-dir to resume it")
    judge = judge or build_judge(judge_spec, cache=True, **judge_options)
    base_rows = read_rows(run_dir / strong["answers"])
    rows, judgments = [], {}
    for name, entry in entries.items():
        row: dict[str, Any] = {"entry": name, "group": entry["group"],
                               "method": entry["method"], "what": entry["what"],
                               "status": entry["status"], "reason": entry.get("reason"),
                               "run": entry.get("run")}
        if entry["status"] != "ok":
            rows.append(row)
            continue
        if name == "strong":
            scores = (judge.score([r["prompt"] for r in base_rows],
                                  [r["response"] for r in base_rows])
                      if judge.kind == "reward" else None)
            row.update(win_rate=50.0, win_rate_se=0.0, wins=0, ties=len(base_rows), losses=0,
                       n=len(base_rows), unmatched=0,
                       n_prompts=len({r["prompt"] for r in base_rows}),
                       gold_reward=float(sum(scores) / len(scores)) if scores else None,
                       win_rate_note="the baseline itself: 50 by definition")
        else:
            figures, judged = judge_entry(judge, read_rows(run_dir / entry["answers"]),
                                          base_rows)
            row.update(figures)
            judgments[name] = judged
        row["answers"] = entry["answers"]
        row["own"] = own_figures(run_dir, entry)
        row["compute"] = entry_compute(run_dir, entry, entries)
        rows.append(row)
    basis = "gold_reward" if judge.kind == "reward" else "win_rate"
    _gap(rows, basis)
    table = {"judge": judge.identity(), "judge_kind": judge.kind, "gap_basis": basis,
             "baseline": "strong (the strong model as it is)", "rows": rows,
             "notes": notes(entries)}
    if write:
        for name, judged in judgments.items():
            atomic_write_text(run_dir / "judgments" / f"{name}.jsonl",
                              "".join(json.dumps(r) + "\n" for r in judged))
        write_json(run_dir / "table.json", table)
        atomic_write_text(run_dir / "table.md", markdown(table))
        table["plots"] = write_plots(table, run_dir) if plots else []
    return table


def _gap(rows: list[dict], basis: str) -> None:
    """``gap_recovered`` of every finished row, null with its reason where undefined."""
    by = {r["entry"]: r for r in rows}
    strong, ceiling = by.get("strong", {}), by.get("ceiling", {})
    s = strong.get(basis)
    c = ceiling.get(basis) if ceiling.get("status") == "ok" else None
    reason = None
    if ceiling.get("status") != "ok":
        reason = ("no ceiling: " + (ceiling.get("reason") or "it did not run")) if ceiling \
            else "no ceiling entry"
    elif s is None or c is None:
        reason = f"no {basis.replace('_', ' ')} (the judge gives none)"
    elif not c - s > 1e-9:
        reason = (f"the ceiling does not beat the strong model ({basis.replace('_', ' ')} "
                  f"{c:.4g} vs {s:.4g}): no gap to recover")
    for row in rows:
        if row.get("status") != "ok":
            continue
        x = row.get(basis)
        if reason is None and x is not None:
            row["gap_recovered"], row["gap_recovered_reason"] = (x - s) / (c - s), None
        else:
            row["gap_recovered"] = None
            row["gap_recovered_reason"] = reason or f"no {basis} for this entry"


def notes(entries: dict[str, dict]) -> list[str]:
    """What a reader of the table must know (which entries share what, what is optimistic)."""
    out = ["win rates are against the strong model as it is, on the same held-out prompts, by "
           "one judge; an entry's own figures ('own') are against its own method's baseline",
           "compute adds the shared stages an entry used (the weak alignment) and, for ExPO, "
           "the run of the model it extrapolates; a stage read from the cache counts what "
           "reading it cost (listed in cached_stages)",
           "peak memory on a CPU is the process's peak resident set so far (it never goes "
           "down): later entries of one process carry the earlier ones' peak"]
    if any(e["method"] == "expo" and e["status"] == "ok" for e in entries.values()):
        out.append("ExPO's alpha is the one its judge scores best on these same held-out "
                   "prompts (as ExPO's own selection): optimistic by that choice")
    if any(e["method"] == "search" and e["status"] == "ok" for e in entries.values()):
        out.append("decoding-time entries answer each prompt once (paired with the strong "
                   "model's first answer); they train nothing and spend their compute at "
                   "inference")
    return out


# --------------------------------------------------------------------------------------------
# rendering


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def _tokens(v: Any) -> str:
    if not v:
        return "0"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{v / size:.3g}{unit}"
    return str(v)


COLUMNS = ("entry", "group", "win rate", "gold", "gap recovered", "train tok", "gen tok",
           "wall s", "peak GB")


def cells(row: dict) -> list[str]:
    """One row of the rendered table (terminal and markdown alike)."""
    if row.get("status") != "ok":
        return [row["entry"], row["group"], f"{row['status']}: {row.get('reason') or ''}",
                "", "", "", "", "", ""]
    c = row["compute"]
    wr = (f"{row['win_rate']:.1f} ± {row['win_rate_se']:.1f}"
          if row.get("win_rate_se") is not None else _num(row.get("win_rate")))
    gap = _num(row["gap_recovered"], 2) if row.get("gap_recovered") is not None else "-"
    return [row["entry"], row["group"], wr, _num(row.get("gold_reward")), gap,
            _tokens(c["training_tokens"]), _tokens(c["generated_tokens"]),
            f"{c['wall_s']:.0f}", f"{c['peak_memory_bytes'] / 2**30:.2f}"]


def markdown(table: dict) -> str:
    """table.md: the table, the judge, why any gap is undefined, and the notes."""
    lines = ["# w2s compare: every entry against the strong model as it is",
             "", f"Judge: `{table['judge'].get('judge')}`"
             if isinstance(table["judge"], dict) else f"Judge: `{table['judge']}`",
             f"Gap recovered on: {table['gap_basis'].replace('_', ' ')}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in table["rows"]:
        lines.append("| " + " | ".join(cells(row)) + " |")
    reasons = sorted({r["gap_recovered_reason"] for r in table["rows"]
                      if r.get("status") == "ok" and r.get("gap_recovered_reason")})
    if reasons:
        lines += ["", "Gap recovered undefined: " + "; ".join(reasons)]
    lines += ["", "Notes:"] + [f"- {n}" for n in table["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# plots


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point dominates (less or equal cost AND more or equal
    quality, one of them strictly): ``points`` are (name, cost, quality)."""
    front = []
    for name, cost, quality in points:
        dominated = any((c <= cost and q >= quality) and (c < cost or q > quality)
                        for other, c, q in points if other != name)
        if not dominated:
            front.append(name)
    return front


def write_plots(table: dict, run_dir: Path) -> list[str]:
    """quality-vs-compute.png (the Pareto front marked) and win-rate.png (95% intervals)."""
    from w2s.evaluation.plots import MISSING, pyplot, save_figure

    plt = pyplot()
    if plt is None:
        table.setdefault("notes", []).append(MISSING)
        return []
    done = [r for r in table["rows"] if r.get("status") == "ok"]
    quality = table["gap_basis"]
    points = [(r["entry"], r["compute"]["forward_tokens"] + r["compute"]["training_tokens"]
               + r["compute"]["generated_tokens"], r[quality]) for r in done
              if r.get(quality) is not None]
    written = []
    if points:
        front = set(pareto_front(points))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, cost, q in points:
            ax.scatter([max(cost, 1)], [q], color="tab:red" if name in front else "tab:blue")
            ax.annotate(name, (max(cost, 1), q), fontsize=8, xytext=(3, 3),
                        textcoords="offset points")
        line = sorted((max(c, 1), q) for n, c, q in points if n in front)
        ax.plot([x for x, _ in line], [y for _, y in line], color="tab:red", lw=1,
                label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("compute: tokens forwarded + trained + generated")
        ax.set_ylabel(quality.replace("_", " "))
        ax.legend()
        written.append(str(save_figure(fig, run_dir / "quality-vs-compute.png").name))
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(done) + 1.5))
    names = [r["entry"] for r in done]
    values = [r["win_rate"] for r in done]
    errors = [1.96 * (r.get("win_rate_se") or 0.0) for r in done]
    ax.errorbar(values, range(len(done)), xerr=errors, fmt="o", capsize=3)
    ax.axvline(50, color="grey", lw=0.8, ls="--")
    ax.set_yticks(range(len(done)), names)
    ax.set_xlabel("win rate vs the strong model as it is (95% interval)")
    written.append(str(save_figure(fig, run_dir / "win-rate.png").name))
    return written
