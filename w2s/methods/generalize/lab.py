"""The generalize leg of the offline lab (``w2s lab``): its summary and verdict, computed from the
run's figures by a fixed rule written before the run (torch-free)."""

from __future__ import annotations

from typing import Any

from w2s.evaluation.verdicts import short


def lab_summary(results: dict[str, dict]) -> dict:
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
        verdict = (f"no gap to recover here: the strong ceiling ({short(ceiling)}) does not beat "
                   f"the weak model ({short(weak)})")
    else:
        parts = ", ".join(f"{loss} PGR {short(out[f'pgr_{loss}'])} (95% CI "
                          f"{short(out[f'pgr_{loss}_ci'][0])}..{short(out[f'pgr_{loss}_ci'][1])})"
                          for loss in results)
        verdict = (f"weak {short(weak)} -> ceiling {short(ceiling)}; {parts}"
                   + ("" if shows else "; the strong student did not beat its supervisor"))
    return {**out, "shows": shows, "verdict": verdict}
