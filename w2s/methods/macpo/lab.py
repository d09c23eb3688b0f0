"""The macpo leg of the offline lab (``w2s lab``): its summary and verdict, computed from the
run's figures by a fixed rule written before the run (torch-free)."""

from __future__ import annotations

from w2s.evaluation.verdicts import short, significant


def lab_summary(results: dict[str, dict]) -> dict:
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
    per_it = ", ".join(f"iter {it['iteration']}: {short(it['win_rate'])} (gold "
                       f"{short(it['gold_reward'])})" for it in out["iterations"])
    verdict = (f"student vs its initial SFT on the teacher's answers (gold "
               f"{short(out['gold_reward_baseline'])}): {per_it}"
               + ("" if shows else "; the student did not improve over its start here")
               + ("" if not shows or significant(out["win_rate"], out["win_rate_se"]) else
                  "; in direction, within two standard errors of 50 at this size"))
    return {**out, "shows": shows, "verdict": verdict}
