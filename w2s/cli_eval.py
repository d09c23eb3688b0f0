"""``w2s eval ...``: the evaluation layer on its own, over recorded runs or files (the
benchmarks, win rates, PGR and the deception score). :mod:`w2s.cli` mounts it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from w2s.config import comma_list
from w2s.console import _cell, console, register_model_builders
from w2s.errors import W2SError

eval_app = typer.Typer(help="The evaluation layer on its own, over recorded runs or files.",
                       no_args_is_help=True)

MAX_RETRIES_OPTION = typer.Option(3, "--max-retries", help="api judge: retries per request "
                                  "(exponential backoff)")
RATE_LIMIT_OPTION = typer.Option(None, "--rate-limit", help="api judge: at most this many "
                                 "requests per second")
DEVICE_OPTION = typer.Option("auto", "--device", help="model judges: auto, cpu, cuda, mps")
JUDGE_CACHE_OPTION = typer.Option(None, "--judge-cache", help="folder of the judgment cache "
                                  "(default <w2s cache>/judgments)")
NO_CACHE_OPTION = typer.Option(False, "--no-cache", help="ask the judge again, cache nothing")
JUDGES_OPTION = typer.Option(
    None, "--judges", help="more judges (comma list), each judging the same items as --judge: "
    "their figures and agreement go to metrics.json's judge_robustness")
REPEATS_OPTION = typer.Option(
    1, "--judge-repeats", help="judge everything N times with each judge that is not "
    "deterministic (api:); the figure is the median, with its spread")


def _print_robustness(metrics: dict) -> None:
    """The judge-robustness table, when the run has one."""
    record = metrics.get("judge_robustness")
    if not record:
        return
    table = Table(title=escape(f"{record['figure']} by judge ({record['repeats']} repeats)"))
    for col in ("judge", "median", "min", "max", "repeats run"):
        table.add_column(col)
    for judge, r in record["per_judge"].items():
        table.add_row(escape(judge), _cell(r["median"]), _cell(r["min"]), _cell(r["max"]),
                      f"{r['n']}" + (" (deterministic)" if r["deterministic"] else ""))
    console.print(table)
    for pair, a in record["agreement"].items():
        console.print(f"agreement {pair}: {_cell(a['agreement'])} over {a['items']} items",
                      markup=False)


@eval_app.command("winrate")
def eval_winrate_cmd(
    candidate: Path = typer.Option(..., "--candidate", help="candidate generations: .jsonl "
                                   "{id, prompt, response} rows or AlpacaEval .json"),
    baseline: Path = typer.Option(..., "--baseline", help="baseline generations, same formats"),
    judge: str = typer.Option(..., "--judge", help="vader | reward:NAME | rm:MODEL | "
                              "cls:MODEL:LABEL | llm:MODEL | api:URL[#MODEL]"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="where to write the run "
                                           "(default runs/winrate/<time>-<hash>)"),
    batch_size: int = typer.Option(8, "--batch-size", help="model judges: rows per forward pass"),
    device: str = DEVICE_OPTION,
    timeout: float = typer.Option(60.0, "--timeout", help="api judge: seconds per request"),
    max_retries: int = MAX_RETRIES_OPTION,
    rate_limit: Optional[float] = RATE_LIMIT_OPTION,
    workers: int = typer.Option(1, "--workers", help="api judge: parallel requests"),
    judge_cache: Optional[Path] = JUDGE_CACHE_OPTION,
    no_cache: bool = NO_CACHE_OPTION,
    judges: Optional[str] = JUDGES_OPTION,
    judge_repeats: int = REPEATS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON only"),
) -> None:
    """Win rate of --candidate against --baseline under a judge (rows pair by id, else prompt).

    Pairwise judges see every pair in both orders (disagreement = tie); reward judges score each
    output (higher wins). Writes a run directory: config.yaml, env.json (judge identity),
    judgments.jsonl, metrics.json (win_rate, win_rate_se, wins/ties/losses, lc_win_rate, ...).
    """
    from w2s.evaluation.winrate import eval_winrate

    if "tiny:" in judge:  # a model judge (rm:, cls:, llm:) on a tiny model; api: stays light
        register_model_builders()
    cache = False if no_cache else (judge_cache or True)
    metrics, path = eval_winrate(candidate, baseline, judge, run_dir=run_dir, cache=cache,
                                 judges=comma_list(judges), repeats=judge_repeats,
                                 batch_size=batch_size, device=device, timeout=timeout,
                                 max_retries=max_retries, rate_limit=rate_limit, workers=workers)
    if as_json:
        console.print_json(json.dumps(metrics))
        return
    table = Table(title=escape(f"win rate: {candidate.name} vs {baseline.name} ({judge})"))
    for col in ("win rate", "s.e.", "LC win rate", "wins", "ties", "losses", "n", "unmatched"):
        table.add_column(col)
    um = metrics["unmatched"]
    table.add_row(_cell(metrics["win_rate"]), _cell(metrics["win_rate_se"]),
                  _cell(metrics["lc_win_rate"]), str(metrics["wins"]), str(metrics["ties"]),
                  str(metrics["losses"]), str(metrics["n"]),
                  f"{um['candidate']} cand / {um['baseline']} base")
    console.print(table)
    _print_robustness(metrics)
    if metrics.get("candidate_reward_mean") is not None:
        console.print(f"mean reward: candidate {metrics['candidate_reward_mean']:.4g}, "
                      f"baseline {metrics['baseline_reward_mean']:.4g}", markup=False)
    if metrics.get("lc_win_rate_reason"):
        console.print(f"LC win rate: {metrics['lc_win_rate_reason']}", markup=False)
    if um["candidate"] or um["baseline"]:
        console.print(f"[yellow]unmatched rows (by {um['by']}): candidate "
                      f"{escape(str(um['candidate_first']))}, baseline "
                      f"{escape(str(um['baseline_first']))}; left out[/yellow]")
    console.print(f"run: {escape(str(path))}")


@eval_app.command("alpacaeval")
def eval_alpacaeval_cmd(
    candidate: Path = typer.Option(..., "--candidate", help="the model's answers: AlpacaEval "
                                   ".json (instruction, output, generator) or .jsonl rows"),
    baseline: Path = typer.Option(..., "--baseline", help="the baseline's answers, listing the "
                                  "eval set IN ITS ORDER (AlpacaEval's reference outputs do)"),
    judge: str = typer.Option(..., "--judge", help="vader | reward:NAME | rm:MODEL | "
                              "cls:MODEL:LABEL | llm:MODEL | api:URL[#MODEL]"),
    alpacaeval_data: Optional[Path] = typer.Option(
        None, "--alpacaeval-data", help="df_gamed.csv (or its folder), AlpacaEval's "
        "instruction difficulties and gamed baselines; default: the hub dataset "
        "tatsu-lab/alpaca_eval"),
    annotator: str = typer.Option(
        "auto", "--annotator", help="alpacaeval (AlpacaEval 2's weighted_alpaca_eval_gpt4_turbo:"
        " its prompt, one seeded order, the log-probs of m / M; api: or llm: judges), pairwise "
        "(the judge's own rule: both orders, or a reward's scores), auto (alpacaeval where the "
        "judge can)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="where to write the run "
                                           "(default runs/alpacaeval/<time>-<hash>)"),
    batch_size: int = typer.Option(8, "--batch-size", help="model judges: rows per forward pass"),
    device: str = DEVICE_OPTION,
    timeout: float = typer.Option(60.0, "--timeout", help="api judge: seconds per request"),
    max_retries: int = MAX_RETRIES_OPTION,
    workers: int = typer.Option(1, "--workers", help="api judge: parallel requests"),
    no_cache: bool = NO_CACHE_OPTION,
    judges: Optional[str] = JUDGES_OPTION,
    judge_repeats: int = REPEATS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON only"),
) -> None:
    """AlpacaEval 2: the length-controlled win rate (AlpacaEval's length_controlled_v1 GLM,
    computed by the alpaca-eval package: pip install 'w2s[alpacaeval]'), the raw win rate and
    their standard errors, with AlpacaEval's warning when the two differ a lot."""
    from w2s.evaluation.benchmarks.alpacaeval import eval_alpacaeval

    if "tiny:" in judge:
        register_model_builders()
    metrics, path = eval_alpacaeval(candidate, baseline, judge, alpacaeval_data=alpacaeval_data,
                                    annotator=annotator, run_dir=run_dir, cache=not no_cache,
                                    judges=comma_list(judges), repeats=judge_repeats,
                                    batch_size=batch_size, device=device, timeout=timeout,
                                    max_retries=max_retries, workers=workers)
    if as_json:
        console.print_json(json.dumps(metrics))
        return
    table = Table(title=escape(f"AlpacaEval 2: {metrics['generator']} ({judge})"))
    for col in ("LC win rate", "s.e.", "win rate", "s.e.", "wins", "ties", "losses", "n"):
        table.add_column(col)
    table.add_row(_cell(metrics["lc_win_rate"]), _cell(metrics["lc_win_rate_se"]),
                  _cell(metrics["win_rate"]), _cell(metrics["win_rate_se"]),
                  str(metrics["wins"]), str(metrics["ties"]), str(metrics["losses"]),
                  str(metrics["n"]))
    console.print(table)
    _print_robustness(metrics)
    if metrics["lc_warning"]:
        console.print(f"[yellow]{escape(metrics['lc_warning'])}[/yellow]")
    console.print(f"run: {escape(str(path))}")


@eval_app.command("mtbench")
def eval_mtbench_cmd(
    answers: Path = typer.Option(..., "--answers", help="the model's answers: FastChat's "
                                 "answer jsonl {question_id, model_id, choices: [{turns}]}"),
    judge: str = typer.Option(..., "--judge", help="api:URL#MODEL (an OpenAI-compatible "
                              "server; GPT-4 for the papers' figures) | llm:MODEL (local)"),
    questions: Optional[Path] = typer.Option(
        None, "--questions", help="FastChat's question.jsonl (default: the hub dataset "
        "lighteval/mt-bench)"),
    references: Optional[Path] = typer.Option(
        None, "--references", help="reference answers for math/reasoning/coding, answer "
        "format (FastChat's reference_answer/gpt-4.jsonl)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="where to write the run "
                                           "(default runs/mtbench/<time>-<hash>)"),
    max_tokens: int = typer.Option(2048, "--max-tokens", help="new tokens per judgment"),
    batch_size: int = typer.Option(8, "--batch-size", help="llm judge: prompts per batch"),
    device: str = DEVICE_OPTION,
    timeout: float = typer.Option(120.0, "--timeout", help="api judge: seconds per request"),
    max_retries: int = MAX_RETRIES_OPTION,
    rate_limit: Optional[float] = RATE_LIMIT_OPTION,
    workers: int = typer.Option(1, "--workers", help="api judge: parallel requests"),
    judge_cache: Optional[Path] = JUDGE_CACHE_OPTION,
    no_cache: bool = NO_CACHE_OPTION,
    judges: Optional[str] = JUDGES_OPTION,
    judge_repeats: int = REPEATS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON only"),
) -> None:
    """MT-Bench single-answer grading, as FastChat's llm_judge: the judge rates each answer's
    turn 1 and turn 2 from 1 to 10 ([[rating]]); unreadable ratings are left out and counted.

    Writes a run directory: config.yaml, env.json (judge, prompt template hashes, file hashes),
    judgments.jsonl, metrics.json (mtbench_score, turn_1, turn_2, categories, n, failed).
    """
    from w2s.evaluation.benchmarks.mtbench import eval_mtbench

    if "tiny:" in judge:
        register_model_builders()
    cache = False if no_cache else (judge_cache or True)
    metrics, path = eval_mtbench(answers, judge, questions=questions, references=references,
                                 run_dir=run_dir, cache=cache, max_tokens=max_tokens,
                                 judges=comma_list(judges), repeats=judge_repeats,
                                 batch_size=batch_size, device=device, timeout=timeout,
                                 max_retries=max_retries, rate_limit=rate_limit,
                                 workers=workers)
    if as_json:
        console.print_json(json.dumps(metrics))
        return
    table = Table(title=escape(f"MT-Bench: {answers.name} ({judge})"))
    for col in ("", "mean", "scored", "failed"):
        table.add_column(col)
    table.add_row("MT-Bench score", _cell(metrics["mtbench_score"]), str(metrics["scored"]),
                  str(metrics["failed"]))
    for turn, r in metrics["turns"].items():
        table.add_row(f"turn {turn}", _cell(r["mean"]), str(r["scored"]), str(r["failed"]))
    for cat, r in metrics["categories"].items():
        table.add_row(escape(cat), _cell(r["mean"]), str(r["scored"]), str(r["failed"]))
    console.print(table)
    _print_robustness(metrics)
    if metrics["failed"]:
        console.print(f"{metrics['failed']} of {metrics['n']} judgments had no readable "
                      "[[rating]] (score -1, left out of the means)", markup=False,
                      style="yellow")
    console.print(f"run: {escape(str(path))}")


@eval_app.command("arenahard")
def eval_arenahard_cmd(
    answers: Path = typer.Option(..., "--answers", help="the model's answers: Arena-Hard's "
                                 "answer .jsonl (uid/question_id, model, messages or choices)"),
    baseline: Path = typer.Option(..., "--baseline", help="the baseline's answers, same format "
                                  "(v0.1: gpt-4-0314; v2: o3-mini-2025-01-31)"),
    judge: str = typer.Option(..., "--judge", help="a generative judge: api:URL[#MODEL] | "
                              "llm:MODEL"),
    questions: Optional[Path] = typer.Option(
        None, "--questions", help="question.jsonl (uid/question_id, category, prompt or turns);"
        " default: the prompts the answer files carry"),
    setting: str = typer.Option("v2", "--setting", help="v0.1 (the original code: GPT-4-Turbo "
                                "judge, BT MLE, 95% interval) or v2 (current code)"),
    category: Optional[str] = typer.Option(None, "--category", help="score only the questions "
                                           "of this category (v2: hard_prompt, "
                                           "creative_writing)"),
    n_boot: int = typer.Option(100, "--n-boot", help="bootstrap rounds"),
    seed: int = typer.Option(42, "--seed", help="bootstrap seed"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="judge reply tokens "
                                             "(default v0.1 4096, v2 16000)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="where to write the run "
                                           "(default runs/arenahard/<time>-<hash>)"),
    device: str = DEVICE_OPTION,
    timeout: float = typer.Option(600.0, "--timeout", help="api judge: seconds per request"),
    max_retries: int = MAX_RETRIES_OPTION,
    rate_limit: Optional[float] = RATE_LIMIT_OPTION,
    workers: int = typer.Option(1, "--workers", help="api judge: questions judged in parallel"),
    judge_cache: Optional[Path] = JUDGE_CACHE_OPTION,
    no_cache: bool = NO_CACHE_OPTION,
    judges: Optional[str] = JUDGES_OPTION,
    judge_repeats: int = REPEATS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON only"),
) -> None:
    """Arena-Hard-Auto: the model's win rate against the baseline, as Arena-Hard's code scores
    it: each question judged twice (positions swapped), [[A>>B]]-style verdicts (>> = 3
    battles), Bradley-Terry, a bootstrap interval, and the style-controlled score."""
    from w2s.evaluation.benchmarks.arenahard import eval_arenahard

    if "tiny:" in judge:
        register_model_builders()
    cache = False if no_cache else (judge_cache or True)
    metrics, path = eval_arenahard(answers, baseline, judge, questions=questions,
                                   setting=setting, category=category, n_boot=n_boot, seed=seed,
                                   run_dir=run_dir, cache=cache, workers=workers,
                                   max_tokens=max_tokens, device=device, timeout=timeout,
                                   max_retries=max_retries, rate_limit=rate_limit,
                                   judges=comma_list(judges), repeats=judge_repeats)
    if as_json:
        console.print_json(json.dumps(metrics))
        return
    level = f"{round(100 * metrics['ci_level'])}% CI" if metrics["ci_level"] else "CI"
    table = Table(title=escape(f"Arena-Hard {setting}: {metrics['model']} vs "
                               f"{metrics['baseline_model']} ({judge})"))
    for col in ("score", level, "style-controlled", level, "questions", "battles",
                "unparsed games"):
        table.add_column(col)

    def ci(lo, hi):
        return "-" if lo is None else f"[{lo:.1f}, {hi:.1f}]"

    table.add_row(_cell(metrics["score"]), ci(metrics["ci_low"], metrics["ci_high"]),
                  _cell(metrics["style_controlled_score"]),
                  ci(metrics["style_ci_low"], metrics["style_ci_high"]),
                  str(metrics["n_questions"]), str(metrics["n_battles"]),
                  f"{metrics['n_unparsed']} of {metrics['n_games']}")
    console.print(table)
    _print_robustness(metrics)
    if metrics.get("score_reason"):
        console.print(f"[yellow]score: {escape(metrics['score_reason'])}[/yellow]")
    elif metrics["style_controlled_score_reason"]:
        console.print(f"style control: {metrics['style_controlled_score_reason']}", markup=False)
    console.print(f"run: {escape(str(path))}")


@eval_app.command("pgr")
def eval_pgr_cmd(
    run_dir: Path | None = typer.Argument(
        None, help="a run directory with predictions.jsonl (recomputes PGR from it)"),
    weak: str | None = typer.Option(
        None, "--weak", help="weak model: an accuracy in [0,1] or a predictions JSONL file"),
    w2s: str | None = typer.Option(
        None, "--w2s", help="strong-on-weak-labels model: accuracy or predictions JSONL"),
    ceiling: str | None = typer.Option(
        None, "--ceiling", help="strong ceiling: accuracy or predictions JSONL"),
    n_boot: int = typer.Option(1000, "--n-boot", help="bootstrap resamples for the CI"),
    seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
    as_json: bool = typer.Option(False, "--json", help="print JSON only"),
) -> None:
    """Performance gap recovered: (w2s - weak) / (ceiling - weak), null when ceiling <= weak.

    Give a RUN_DIR, or --weak/--w2s/--ceiling as three accuracies, or as three predictions
    files (rows with id and correct) for a paired bootstrap confidence interval.
    """
    from w2s.evaluation.pgr import eval_pgr

    results = eval_pgr(run_dir, weak, w2s, ceiling, n_boot=n_boot, seed=seed)
    if as_json:
        console.print_json(json.dumps(results))
        return
    table = Table(title="performance gap recovered")
    for col in ("pair", "weak_acc", "strong_ceiling_acc", "w2s_acc", "pgr", "95% CI", "n"):
        table.add_column(col)
    for pair, r in results.items():
        ci = "-" if r.get("ci_low") is None else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        table.add_row(pair or "-", _cell(r["weak_acc"]), _cell(r["strong_ceiling_acc"]),
                      _cell(r["w2s_acc"]), _cell(r["pgr"]), ci, _cell(r.get("n")))
    console.print(table)
    for pair, r in results.items():
        if r.get("reason"):
            console.print(f"[yellow]{pair or 'pgr'}: {r['reason']}[/yellow]")


@eval_app.command("deception")
def eval_deception_cmd(
    run_dir: Path | None = typer.Argument(
        None, help="a `w2s deception` run directory (recomputes from its predictions.jsonl)"),
    weak_ceiling: str | None = typer.Option(
        None, "--weak-ceiling", help="weak ceiling predictions JSONL (rows with id, correct)"),
    strong_ceiling: str | None = typer.Option(
        None, "--strong-ceiling", help="strong ceiling predictions JSONL"),
    no_conflict: str | None = typer.Option(
        None, "--no-conflict", help="strong model on weak labels, no conflict (M~)"),
    conflict: str | None = typer.Option(
        None, "--conflict", help="strong model on weak labels under a conflict (M)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON only"),
) -> None:
    """Deception score: the share of conflict flips (right without conflict, wrong with it) in
    the area the strong ceiling knows and the weak ceiling does not (SK&WU), with the counts and
    the conflict tax of each knowledge area. Null with the reason when undefined.

    Give a RUN_DIR, or the four predictions files (paired by id).
    """
    from w2s.evaluation.deception import AREAS, eval_deception

    result = eval_deception(run_dir, weak_ceiling=weak_ceiling, strong_ceiling=strong_ceiling,
                            no_conflict=no_conflict, conflict=conflict)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table(title="deception score (conflict flips in SK&WU / all conflict flips)")
    for col in ("pair", "setting", "score", "flips", "n", "no-conflict acc", "conflict acc",
                *(f"tax {a}" for a in AREAS)):
        table.add_column(col)
    groups = list(result["pairs"].items())
    if len(groups) > 1:
        groups.append(("pooled", result["pooled"]))
    for pair, by_setting in groups:
        for setting, r in by_setting.items():
            table.add_row(escape(pair or "-"), setting, _cell(r["score"]),
                          f"{r['deceptive_flips']}/{r['flips']}", str(r["n"]),
                          _cell(r["accuracy"]["no_conflict"]), _cell(r["accuracy"]["conflict"]),
                          *(f"{_cell(r['areas'][a]['tax'])} (n {r['areas'][a]['n']})"
                            for a in AREAS))
    console.print(table)
    for pair, by_setting in groups:
        for setting, r in by_setting.items():
            if r["reason"]:
                console.print(f"[yellow]{escape(pair or '-')} {setting}: "
                              f"{escape(r['reason'])}[/yellow]")
    if result.get("headline_setting"):
        top = result["pooled"].get(result["headline_setting"], {})
        console.print(f"headline ({result['headline_setting']}): {_cell(top.get('score'))}",
                      markup=False)


@eval_app.command("compare")
def eval_compare_cmd(
    run_dir: Path = typer.Argument(..., help="a `w2s compare` run directory"),
    judge: Optional[str] = typer.Option(None, "--judge", help="judge again with another judge "
                                        "(default: the comparison's own)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write table.json, table.md, the "
                                       "judgments and plots here (default: RUN_DIR itself)"),
    batch_size: int = typer.Option(16, "--batch-size", help="model judges: rows per forward "
                                   "pass"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="write the plots"),
    as_json: bool = typer.Option(False, "--json", help="print the table as JSON"),
) -> None:
    """The comparison's table recomputed from its stored per-example answers: every entry
    judged against the strong model as it is (win rate, SE, gold reward, gap recovered) with
    its compute."""
    import shutil

    import yaml

    from w2s.methods.compare.experiment import print_table
    from w2s.methods.compare.table import build_table

    if not (run_dir / "entries.json").is_file():
        raise W2SError(f"{run_dir} is not a `w2s compare` run directory (no entries.json)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    target = run_dir
    if out is not None and out.resolve() != run_dir.resolve():
        # the table reads the entries through entries.json's relative paths: link them in
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / "entries.json", out / "entries.json")
        link = out / "entries"
        if not link.exists():
            link.symlink_to((run_dir / "entries").resolve(), target_is_directory=True)
        target = out
    register_model_builders()
    table = build_table(target, judge or config.get("judge", "vader"), plots=plots,
                        batch_size=batch_size)
    if as_json:
        console.print_json(json.dumps(table))
        return
    print_table(table)
    console.print(f"table: {escape(str(target / 'table.md'))}")
