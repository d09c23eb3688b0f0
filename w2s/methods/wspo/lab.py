"""The wspo leg of the offline lab (``w2s lab``): its summary and verdict, computed from the
run's figures by a fixed rule written before the run (torch-free)."""

from __future__ import annotations

from w2s.evaluation.verdicts import short, significant


def lab_summary(results: dict[str, dict]) -> dict:
    """Win rate of the WSPO-trained SmolLM2 against itself before training; gold reward."""
    m = results["run"]
    out = {"win_rate": m["win_rate"], "win_rate_se": m.get("win_rate_se"),
           "wins": m.get("wins"), "ties": m.get("ties"), "losses": m.get("losses"),
           "gold_reward_before": m.get("gold_reward_mean_before"),
           "gold_reward_after": m.get("gold_reward_mean")}
    shows = (out["win_rate"] is not None and out["win_rate"] > 50
             and (out["gold_reward_after"] or 0) > (out["gold_reward_before"] or 0))
    sig = significant(out["win_rate"], out["win_rate_se"])
    verdict = (f"win rate {short(out['win_rate'])} +- {short(out['win_rate_se'])} against the "
               f"strong model before training; gold reward (VADER) "
               f"{short(out['gold_reward_before'])} -> {short(out['gold_reward_after'])}"
               + ("" if shows else "; WSPO did not move the strong model toward the gold "
                  "preference here")
               + ("" if not shows or sig else "; in direction, within two standard errors of "
                  "50 at this size"))
    return {**out, "shows": shows, "significant": sig, "verdict": verdict}
