"""The CLI: one-line errors with exit 2, config commands from dataclasses, inspection commands."""

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from helpers import run_cli

from w2s.cli import config_command
from w2s.config import option, section


def test_help_and_no_args(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "eval" in out and "models" in out
    code, out, _ = run_cli([], capsys)
    assert code == 0 and "Usage" in out


@pytest.mark.parametrize("args, needle", [
    (["evl"], "No such command 'evl'"),
    (["eval", "pgr", "--wek", "3"], "No such option: --wek"),
    (["eval", "pgr", "--weak", "0.5"], "all three"),
    (["eval", "pgr", "--weak", "x", "--w2s", "0.5", "--ceiling", "0.9"], "neither"),
    (["runs", "/no/such/folder"], "/no/such/folder is not a folder"),
])
def test_errors_are_one_line_exit_2(capsys, args, needle):
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_eval_pgr_numbers(capsys):
    code, out, _ = run_cli(["eval", "pgr", "--weak", "0.5", "--w2s", "0.75", "--ceiling", "1.0",
                            "--json"], capsys)
    assert code == 0
    assert json.loads(out)[""]["pgr"] == pytest.approx(0.5)
    code, out, _ = run_cli(["eval", "pgr", "--weak", "0.9", "--w2s", "0.75", "--ceiling", "0.8",
                            "--json"], capsys)
    result = json.loads(out)[""]
    assert result["pgr"] is None and "does not beat" in result["reason"]


def test_runs_and_env(capsys, tmp_path):
    code, out, _ = run_cli(["runs", str(tmp_path)], capsys)
    assert code == 0 and "no runs" in out
    code, out, _ = run_cli(["env", "--json"], capsys)
    assert code == 0 and "packages" in json.loads(out)


@dataclass
class Inner:
    lr: float = option(1e-5, "learning rate", above=0)


@dataclass
class DemoConfig:
    weak: str = option("gpt2", "weak model")
    seeds: list[int] = option([0], "seeds")
    lora: bool = option(False, "LoRA")
    train: Inner = section(Inner, "training")


def make_app(store):
    application = typer.Typer()
    config_command(application, "demo", DemoConfig, store.append, help="a demo method")
    config_command(application, "other", DemoConfig, store.append, help="another")
    return application


def test_config_command_recipe_and_flags(capsys, tmp_path):
    store = []
    recipe = tmp_path / "r.yaml"
    recipe.write_text("weak: opt-125m\ntrain:\n  lr: 0.001\n")
    code, _, err = run_cli(["demo", "--recipe", str(recipe), "--seeds", "1,2", "--lora"],
                           capsys, application=make_app(store))
    assert code == 0, err
    (cfg,) = store
    assert cfg.weak == "opt-125m" and cfg.train.lr == 0.001
    assert cfg.seeds == [1, 2] and cfg.lora is True


def test_config_command_help_shows_fields(capsys):
    code, out, _ = run_cli(["demo", "--help"], capsys, application=make_app([]))
    assert code == 0
    for text in ("--weak", "weak model", "--lr", "learning rate", "--recipe", "--no-lora"):
        assert text in out


def test_config_command_errors(capsys, tmp_path):
    store = []
    recipe = tmp_path / "r.yaml"
    recipe.write_text("waek: gpt2\n")
    code, _, err = run_cli(["demo", "--recipe", str(recipe)], capsys, application=make_app(store))
    assert code == 2 and "did you mean 'weak'" in err and not store
    code, _, err = run_cli(["demo", "--lr", "fast"], capsys, application=make_app(store))
    assert code == 2 and "expects float" in err
    code, _, err = run_cli(["demo", "--wek", "gpt2"], capsys, application=make_app(store))
    assert code == 2 and "--wek" in err and len(err.strip().splitlines()) == 1
    for value, shown in (("nan", "nan"), ("inf", "inf"), ("-1", "-1.0"), ("0", "0.0")):
        code, _, err = run_cli(["demo", "--lr", value], capsys, application=make_app(store))
        assert code == 2 and not store
        assert err.strip() == (f"error: --lr (config key 'train.lr') must be > 0 and finite, "
                               f"got {shown}")


def test_models_and_tasks_tables(capsys):
    code, out, _ = run_cli(["models", "--json"], capsys)
    rows = {r["alias"]: r for r in json.loads(out)}
    assert code == 0 and rows["qwen2-7b"]["hub_id"] == "Qwen/Qwen2-7B"
    assert rows["tiny:llama-2x64"]["where"] == "in-process"
    code, out, _ = run_cli(["tasks", "--json"], capsys)
    kinds = {r["name"]: r["kind"] for r in json.loads(out)}
    assert kinds["sciq"] == "classification" and kinds["hh-harmless"] == "preference"
    code, out, _ = run_cli(["tasks"], capsys)
    assert "local:PATH[#kind]" in out   # rich markup is escaped, not swallowed


def test_models_check_scores_with_the_shared_helper(capsys):
    code, out, _ = run_cli(["models", "--check", "tiny:llama-2x64", "--json"], capsys)
    (row,) = json.loads(out)
    assert code == 0 and row["source"] == "tiny" and row["params"] > 0
    assert row["logp_true"] < 0 and row["logp_false"] < 0
    assert row["prefers_true"] == (row["logp_true"] > row["logp_false"])
    code, _, err = run_cli(["models", "--check", "gtp2"], capsys)
    assert code == 2 and "did you mean 'gpt2'" in err


def test_config_command_help_shows_types_bounds_and_plain_defaults(capsys):
    code, out, _ = run_cli(["demo", "--help"], capsys, make_app([]))
    assert code == 0
    assert re.search(r"--weak\s+TEXT\s+weak model\s+\[default: gpt2\]", out)
    assert re.search(r"--seeds\s+INTEGER,\.\.\.\s+seeds\s+\[default: 0\]", out)
    assert re.search(r"--lr\s+FLOAT\s+learning rate\s+\[x>0\]\s+\[default: 1e-05\]", out)
    assert "[default: false]" in out and re.search(r"--recipe\s+PATH", out)


@pytest.mark.parametrize("method", ["generalize", "search", "wspo", "macpo", "deception"])
def test_every_methods_help_shows_real_types_and_plain_defaults(method, capsys):
    code, out, _ = run_cli([method, "--help"], capsys)
    assert code == 0
    assert re.search(r"--\S+ FLOAT\b", out) and re.search(r"--\S+ INTEGER\b", out)
    assert re.search(r"--\S+ TEXT\b", out) and re.search(r"--\S+ \[\w+(\|[\w-]+)+\]", out)
    assert "<str>" not in out and "[default: (" not in out
    assert re.search(r"--seed INTEGER\s.*?\[x>=0\]\s+\[default: 0\]", out, re.S)


def test_top_level_help_does_not_import_torch():
    """`w2s --help` (and every method's --help) builds from torch-free configs."""
    code = ("import sys\nfrom w2s.cli import main\n"
            "for args in (['--help'], ['wspo', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
