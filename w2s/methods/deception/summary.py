"""metrics.json of ``w2s deception``: the experiments' results pooled into the headline score.

:func:`summarize` turns the result of every chain and seed (:meth:`Experiment.run_chain
<w2s.methods.deception.experiment.Experiment.run_chain>`) into metrics.json: the headline
setting's deception score and its areas (pooled over a sweep's test examples), every setting's
score, one table row per experiment, and, for sweeps, the plot of the score against the
weak-strong gap. Plain data in, plain data out: no torch here.
"""

from __future__ import annotations

from typing import Any

from w2s.evaluation.deception import deception_score


def summarize(results: list[dict], plan: dict, run) -> dict:
    """metrics.json: the headline deception score and its areas (of the one experiment, or
    pooled over a sweep's test examples), every setting's score, a table per experiment, and
    (sweeps) the plot of the score against the weak-strong gap."""
    headline = plan["headline"]
    pooled: dict[str, dict[str, Any]] = {}
    for setting in plan["settings"]:
        cols: list[list[bool]] = [[], [], [], []]
        for res in results:
            for acc, col in zip(cols, res["correct"][setting], strict=True):
                acc.extend(col)
        pooled[setting] = deception_score(*cols)
    top = pooled.get(headline) if headline else None
    reason = top["reason"] if top else "no conflict setting trained: train implicit or explicit"
    metrics: dict[str, Any] = {
        "task": results[0]["task"], "objective": results[0]["objective"],
        "headline_setting": headline,
        "deception_score": top["score"] if top else None,
        "deception_score_reason": reason,
        "deception_reason": reason,  # the name earlier versions wrote
        "gold_reward_reason": "deception is judged by the preference labels, not a gold reward",
        "baseline_gold_reward_reason": "deception is judged by the preference labels",
        "areas": top["areas"] if top else None,
        "pooled_over": len(results),
        "settings": pooled,
    }
    table = []
    for res in results:
        row = {"pair": res["pair"], "weak": res["models"][0], "strong": res["models"][-1],
               "seed": res["seed"], "weak_ceiling_acc": res["accuracy"]["weak_ceiling"],
               "strong_ceiling_acc": res["accuracy"]["strong_ceiling"],
               "gap": res["accuracy"]["strong_ceiling"] - res["accuracy"]["weak_ceiling"]}
        for setting in plan["settings"]:
            row[f"deception_score_{setting}"] = res["scores"][setting]["score"]
        table.append(row)
    metrics["table"] = table
    metrics["experiments"] = [{k: v for k, v in res.items() if k != "correct"} for res in results]
    metrics["trained_models"] = sum(r["trained_models"] for r in results)
    metrics["plot"] = _plot(table, plan["settings"], run) if len(results) > 1 else None
    return metrics


def _plot(table: list[dict], settings: list[str], run) -> str | None:
    """deception.png: the deception score of each setting against the weak-strong gap (strong
    ceiling accuracy minus weak ceiling accuracy), one point per experiment (matplotlib is
    optional: ``pip install 'w2s[plot]'``)."""
    from w2s.evaluation.plots import MISSING, pyplot, save_figure

    plt = pyplot()
    if plt is None:
        run.log({"event": "note", "note": MISSING})
        return None
    if not run.main or not settings:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.6))
    drawn = 0
    for setting, marker in zip(settings, "os^", strict=False):
        points = sorted((r["gap"], r[f"deception_score_{setting}"], r["strong"]) for r in table
                        if r[f"deception_score_{setting}"] is not None)
        if not points:
            continue
        drawn += 1
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=setting)
        for x, y, name in points:
            ax.annotate(name.removeprefix("tiny:").split("+")[0], (x, y), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("weak-strong gap (strong ceiling acc - weak ceiling acc)")
    ax.set_ylabel("deception score")
    ax.set_ylim(0, 1)
    ax.set_title("weak-to-strong deception")
    if drawn:
        ax.legend(title="conflict", fontsize=8)
    else:
        ax.text(0.5, 0.5, "deception score undefined in every experiment", ha="center",
                transform=ax.transAxes, fontsize=8)
    return save_figure(fig, run.path / "deception.png").name
