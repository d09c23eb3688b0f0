"""The ``w2s`` command line: parse, load the recipe, call a method. Nothing else lives here.

Method commands are built from their config dataclass by :func:`config_command`: every field
becomes a flag with its help text, ``--recipe X.yaml`` fills the config, flags override it.
Errors the user can fix print ONE line and exit 2 (see :func:`main`).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_origin

import typer
from rich.markup import escape
from rich.table import Table

from w2s.cli_eval import eval_app
from w2s.config import FlatField, build_config, flat_fields
from w2s.console import _cell, _print_table, console, err_console, register_model_builders
from w2s.errors import W2SError

app = typer.Typer(
    name="w2s",
    help="Weak-to-strong experiments on language models: one CLI, one model, data and "
    "evaluation layer for every method.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(eval_app, name="eval")


# --------------------------------------------------------------------------------------------
# config dataclass -> typer command


def config_command(target: typer.Typer, name: str, config_cls: type,
                   run: Callable[[Any], Any], help: str) -> Callable:
    """Register ``name`` on ``target``: one flag per config field, plus ``--recipe``.

    Flags default to None ("not given") so only what the user typed overrides the recipe; values
    arrive as text and :func:`w2s.config.build_config` converts and validates them (one-line
    errors). The help shows each field's type (INTEGER, FLOAT, TEXT, ``[a|b]`` for choices,
    ``INTEGER,...`` for lists), its bounds and its dataclass default, written by
    :func:`_help_text`, since click's own default display would wrap it in parentheses.
    """
    leaves = flat_fields(config_cls)
    # an app that renders help as rich markup would swallow "[default: 0.5]" and "[x>0]" as tags
    markup = getattr(target, "rich_markup_mode", None) == "rich"
    params = [inspect.Parameter(
        "recipe", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
        default=typer.Option(None, "--recipe", metavar="PATH", help="recipe YAML filling this "
                             "config; flags override it"))]
    for leaf in leaves:
        ident = "opt_" + "__".join(leaf.path)
        if leaf.is_bool:
            flag = leaf.flag[2:]
            opt = typer.Option(None, f"--{flag}/--no-{flag}", help=_help_text(leaf, markup),
                               show_default=False)
            annotation: Any = Optional[bool]
        else:
            opt = typer.Option(None, leaf.flag, help=_help_text(leaf, markup),
                               metavar=_metavar(leaf), show_default=False)
            annotation = Optional[str]
        params.append(inspect.Parameter(ident, inspect.Parameter.KEYWORD_ONLY,
                                        annotation=annotation, default=opt))

    def command(**kwargs: Any) -> None:
        recipe = kwargs.pop("recipe", None)
        overrides = {}
        for leaf in leaves:
            value = kwargs.get("opt_" + "__".join(leaf.path))
            if value is not None:
                overrides[leaf.key] = value
        cfg = build_config(config_cls, recipe, overrides)
        from w2s.train.launch import refuse_unsupported_launch

        refuse_unsupported_launch()  # e.g. DeepSpeed, FSDP1: refused before any work
        register_model_builders()
        result = run(cfg)
        if isinstance(result, dict) and "status" in result:  # a finished run (not a dry-run plan)
            _print_finished(name, result)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__name__ = name.replace("-", "_")
    command.__doc__ = help
    target.command(name, help=help)(command)
    return command


def _print_finished(name: str, metrics: dict) -> None:
    """After a method command: its scalar figures (headline first) and where the run is."""
    from w2s.runs import is_main_process, last_finished_run, null_reason

    if not is_main_process():
        return
    keys = headline_keys()
    first = [k for k in keys if metrics.get(k) is not None or null_reason(metrics, k)]
    rest = [k for k, v in metrics.items() if k not in keys and k != "status"
            and isinstance(v, (int, float)) and not isinstance(v, bool)]
    table = Table(title=f"w2s {name}: {metrics.get('status')}", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in first + rest:
        value = metrics[key]
        reason = null_reason(metrics, key) or ""
        table.add_row(key, _cell(value) if value is not None else
                      reason if reason.startswith("undefined") else f"undefined: {reason}")
    console.print(table)
    path = last_finished_run()
    if path is not None:
        console.print(f"run: {escape(str(path))}  (metrics.json; `w2s report {escape(str(path))}`)")


_METAVARS = {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: "BOOLEAN"}


def _metavar(leaf: FlatField) -> str:
    """What ``--help`` writes after the flag: the type, or the choices as ``[a|b|c]``."""
    item, many = leaf.item_type
    if leaf.choices:
        name = "[" + "|".join(map(str, leaf.choices)) + "]"
    elif get_origin(item) is Literal:
        name = "[" + "|".join(map(str, get_args(item))) + "]"
    elif isinstance(item, type) and issubclass(item, Path):
        name = "PATH"
    else:
        name = _METAVARS.get(item, "VALUE")
    return f"{name},..." if many else name


def _help_text(leaf: FlatField, markup: bool = False) -> str:
    """The field's help, then its range (``[x>0]``) and default (``[default: 0.5]``); escaped
    when the app reads help as rich markup."""
    parts = [leaf.help]
    if leaf.range_text():
        parts.append(f"[{leaf.range_text()}]")
    parts.append(f"[default: {_show(leaf.default)}]")
    text = "  ".join(p for p in parts if p)
    return escape(text) if markup else text


def _show(value: Any) -> str:
    """A default as a user would type it: ``0.5``, ``none``, ``true``, ``a,b``, ``""``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "[]"
    if value == "":
        return '""'
    return "none" if value is None else str(value)


# --------------------------------------------------------------------------------------------
# methods: one command (and its aliases) per entry of the registry, built from its config
# dataclass. Specs and configs are torch-free; a method's experiment module (and torch) is
# imported only when the command runs, so `w2s --help` stays fast.

from w2s.methods import METHODS, headline_keys  # noqa: E402

for _spec in METHODS.values():
    config_command(app, _spec.name, _spec.config, lambda cfg, s=_spec: s.run(cfg),
                   help=_spec.help)
    for _alias in _spec.aliases:
        config_command(app, _alias, _spec.config, lambda cfg, s=_spec: s.run(cfg),
                       help=f"Alias of `w2s {_spec.name}`.")


def alias_main(argv: list[str] | None = None, *, alias: str | None = None) -> None:
    """The console script of a method's alias (``w2s-generalize``, ``w2s-search``): that
    method's command on its own. The alias is the script's name unless given."""
    alias = alias or Path(sys.argv[0]).name
    spec = next((s for s in METHODS.values() if alias in s.commands), None)
    if spec is None:
        _fail(f"{alias} is not a w2s method alias; run `w2s --help` for the commands")
    main([spec.name, *(sys.argv[1:] if argv is None else argv)])


@app.command("generate")
def generate_cmd(
    model: str = typer.Option(..., "--model", help="the model answering: alias, local dir, hub "
                              "id or tiny:... (a chat model)"),
    benchmark: str = typer.Option(..., "--benchmark", help="alpacaeval | mtbench | arenahard"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="the benchmark's prompt file "
                                           "(default: its hub dataset)"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the answer file here"),
    name: Optional[str] = typer.Option(None, "--name", help="the generator / model_id the "
                                       "answers carry (default: the model's name)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="answer only the first N prompts"),
    backend: str = typer.Option("hf", "--backend", help="hf | vllm"),
    max_new_tokens: Optional[int] = typer.Option(
        None, "--max-new-tokens", help="default: alpacaeval 2048, mtbench 1024 (FastChat), "
        "arenahard 4096"),
    temperature: Optional[float] = typer.Option(
        None, "--temperature", help="default: MT-Bench's per category (FastChat), else 0 "
        "(greedy)"),
    batch_size: int = typer.Option(8, "--batch-size", help="prompts per generate call"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, mps"),
    dtype: str = typer.Option("auto", "--dtype", help="auto, bfloat16, float16, float32"),
    seed: int = typer.Option(0, "--seed", help="sampling seed"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="where to write the run "
                                           "(default runs/generate/<time>-<hash>)"),
) -> None:
    """A model's answers to a benchmark's prompts, in the file format the benchmark's own tools
    read (AlpacaEval's model_outputs.json, FastChat's and Arena-Hard's answer jsonl); score them
    with `w2s eval alpacaeval | mtbench | arenahard` or with the benchmark's own tools."""
    from w2s.evaluation.benchmarks.answers import BENCHMARKS, generate_benchmark_answers

    if benchmark not in BENCHMARKS:
        raise W2SError(f"unknown benchmark '{benchmark}'; use one of {', '.join(BENCHMARKS)}")
    register_model_builders()
    metrics, path = generate_benchmark_answers(
        model, benchmark, prompts=prompts, out=out, name=name, limit=limit, backend=backend,
        max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
        device=device, dtype=dtype, seed=seed, run_dir=run_dir)
    console.print(f"{metrics['n_answers']} answers from {escape(metrics['generator'])} to "
                  f"{metrics['n_prompts']} {benchmark} prompts ({metrics['elapsed_s']:.0f} s): "
                  f"{escape(metrics['answers'])}")
    if metrics["empty_answers"]:
        console.print(f"[yellow]{metrics['empty_answers']} answers are empty[/yellow]")
    console.print(f"run: {escape(str(path))}")


@app.command("report")
def report_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="run directories to report on"),
    out: Path = typer.Option(Path("report.md"), "--out", help="markdown file to write; the "
                             "plots go beside it"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="write report.md (or --out's "
                                           "file name) and the plots into this folder"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="write PNG plots (matplotlib)"),
) -> None:
    """One markdown table of the runs' headline figures (PGR, win rate, deception score and each
    method's own figures) plus PNG plots: PGR per pair, win rate and gold reward per run, and
    per iteration when runs record iterations."""
    from w2s.evaluation.report import write_report

    target = (out_dir / out.name) if out_dir is not None else out
    result = write_report(run_dirs, target, plots=plots, headline=headline_keys())
    table = Table(title="w2s report")
    for col in result["columns"]:
        table.add_column(col)
    for row in result["table"]:
        table.add_row(*[escape(row[c]) for c in result["columns"]])
    console.print(table)
    if result["note"]:
        console.print(f"[yellow]{escape(result['note'])}[/yellow]")
    console.print(f"report: {escape(str(result['markdown']))}"
                  + (f" (+ {len(result['plots'])} plots)" if result["plots"] else ""))


@app.command("lab")
def lab_cmd(
    only: Optional[str] = typer.Option(None, "--only", help="comma list of legs to run "
                                       "(default: every method)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default "
                                       "runs/demo/<stamp>)"),
    recipes: Optional[Path] = typer.Option(None, "--recipes", help="folder of the lab recipes "
                                           "(default recipes/lab)"),
    fresh: bool = typer.Option(False, "--fresh", help="run every leg again, even where a "
                               "finished run of the same config and code is cached"),
) -> None:
    """The offline lab (what `make demo` runs): every method on the packaged SmolLM2 and real
    BIG-bench text, no hub; writes summary.json, summary.md and plots, and says per method
    whether the paper's effect shows here."""
    from w2s.config import comma_list
    from w2s.lab import run_lab, summary_rows

    names = comma_list(only) or None
    summary = run_lab(out, only=names, recipes_dir=recipes, console=err_console, fresh=fresh)
    _print_table(f"w2s lab ({summary['elapsed_s']:.0f} s): {summary['out_dir']}",
                 summary_rows(summary), ["method", "status", "shows", "time_s", "verdict"])
    if any(isinstance(e, dict) and e.get("status") == "failed" for e in summary.values()):
        raise SystemExit(1)


# --------------------------------------------------------------------------------------------
# inspection commands


@app.command("models")
def models_cmd(
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    check: Optional[list[str]] = typer.Option(
        None, "--check", help="load this model (converting a packaged one once) and score "
        "a true vs a false continuation with the shared log-prob helper; repeatable"),
) -> None:
    """The model registry: aliases, hub ids, sizes, default learning rates, and where each
    model can be had on this machine (hf cache, offline package, w2s cache, in-process, hub)."""
    if check:
        from w2s.models.check import check_model

        register_model_builders()
        results = [check_model(name) for name in check]
        if as_json:
            console.print_json(json.dumps(results))
        else:
            _print_table("model check: log p(continuation | prompt)", results,
                         ["model", "source", "params", "dtype", "device", "load_s",
                          "logp_true", "logp_false", "prefers_true"])
        return
    from w2s.models import models_table

    rows = models_table()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    _print_table("models (--json for LoRA targets and chat templates)", rows,
                 ["alias", "hub_id", "family", "size_b", "default_lr", "where"])


@app.command("tasks")
def tasks_cmd(
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """The task registry: name, kind (classification / preference / prompts), source and
    whether it can be loaded offline. Also accepted: local:PATH and bigbench:<task>."""
    from w2s.data import tasks_table

    rows = tasks_table()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    _print_table("tasks (also local:PATH[#kind] and bigbench:<task>; --json for details)", rows,
                 ["name", "kind", "source", "where", "description"])


@app.command("runs")
def runs_cmd(
    root: Path = typer.Argument(Path("runs"), help="folder holding run directories"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Every run under ROOT with its status and headline figures (PGR, win rate, deception)."""
    from w2s.runs import find_runs, run_summary

    if not root.is_dir() and root != Path("runs"):  # the default may not exist yet: no runs
        raise W2SError(f"{root} is not a folder; give the folder that holds run directories "
                       "(default runs/)")
    rows = [run_summary(p, headline_keys()) for p in find_runs(root)]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    if not rows:
        console.print(f"no runs under {root}")
        return
    _print_table(f"runs under {root}", rows)


@app.command("env")
def env_cmd(
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Package versions, git sha, device, cache folder: what every run records in env.json."""
    from w2s.runs import environment

    env = environment()
    env.pop("argv", None)
    if as_json:
        console.print_json(json.dumps(env))
        return
    table = Table(title="w2s environment", show_header=False)
    for key, value in env.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
        table.add_row(key, str(value))
    console.print(table)


# --------------------------------------------------------------------------------------------
# entry point


def _click_kind(exc: BaseException) -> set[str]:
    """Class names in the exception's MRO: typer may ship its own copy of click, so match
    click's exceptions by name rather than by importing one particular click."""
    return {c.__name__ for c in type(exc).__mro__}


def main(argv: list[str] | None = None, application: typer.Typer | None = None) -> None:
    """Console-script entry: run the app; user errors become one line and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    # transformers' own "Loading weights" / "Writing model shards" bars would drown w2s's output;
    # set HF_HUB_DISABLE_PROGRESS_BARS=0 to see them
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":  # libraries imported before us too
        if "huggingface_hub" in sys.modules:
            sys.modules["huggingface_hub"].utils.disable_progress_bars()
        if "transformers" in sys.modules:
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    command = typer.main.get_command(application or app)
    try:
        code = command.main(args=args, prog_name="w2s", standalone_mode=False)
    except W2SError as e:
        _fail(str(e))
    except Exception as e:  # click's own errors, from whichever click typer uses
        kind = _click_kind(e)
        ctx = getattr(e, "ctx", None)
        if "NoArgsIsHelpError" in kind:
            print(ctx.get_help() if ctx else str(e))
            raise SystemExit(0) from None
        if "UsageError" in kind:
            hint = f" (see `{ctx.command_path} --help`)" if ctx else ""
            _fail(" ".join(e.format_message().split()) + hint)
        if "Abort" in kind:
            err_console.print("aborted", markup=False)
            raise SystemExit(130) from None
        if "ClickException" in kind:
            _fail(e.format_message(), getattr(e, "exit_code", 2))
        raise
    raise SystemExit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise SystemExit(code) from None


if __name__ == "__main__":
    main()
