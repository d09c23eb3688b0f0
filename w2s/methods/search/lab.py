"""The search leg of the offline lab (``w2s lab``): its summary and verdict, computed from the
run's figures by a fixed rule written before the run (torch-free)."""

from __future__ import annotations

from typing import Any

from w2s.evaluation.verdicts import short


def lab_summary(results: dict[str, dict]) -> dict:
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
    golds = ", ".join(f"{name} {short(d['gold_reward_mean'])}" for name, d in decoders.items())
    verdict = (f"gold reward (VADER): {golds}; CBS wins {short(out['win_rate'])}"
               f" +- {short(out['win_rate_se'])} % against sampling"
               + ("" if shows else "; the guides did not steer the base model here"))
    return {**out, "shows": shows, "verdict": verdict}
