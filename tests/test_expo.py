"""``w2s expo`` on tiny models: the extrapolation by hand, the in-place tensor-by-tensor path
against full state dicts (and how often each tensor is read), LoRA adapter pairs against peft's
own merge, the CLI end to end (per-alpha rows, the best alpha's model saved, a rerun from the
cache), ``--from-run`` on wspo- and macpo-shaped run directories, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_cli

from w2s.errors import W2SError
from w2s.methods.expo.extrapolate import (
    TensorFiles,
    extrapolate,
    extrapolate_adapters_into,
    extrapolate_into,
)
from w2s.methods.expo.pair import resolve_pair
from w2s.models import LoraSettings, apply_lora, load_causal_lm, save_model

pytestmark = pytest.mark.usefixtures("one_thread", "quiet_small_test_set")

FAST = ["--task", "toy-preference", "--n-prompts", "4", "--judge", "vader",
        "--max-new-tokens", "8", "--temperature", "1", "--gen-batch-size", "8",
        "--alphas", "0.5,1", "--dtype", "fp32", "--device", "cpu"]



def _perturbed(name: str, folder: Path, seed: int, scale: float = 0.05) -> Path:
    """``name`` with every float weight moved by seeded noise, saved to ``folder``."""
    model, tok = load_causal_lm(name, device="cpu", dtype="fp32")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    save_model(model, tok, folder)
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    sft = _perturbed("tiny:llama-1x32", root / "sft", seed=1)
    aligned = _perturbed(str(sft), root / "aligned", seed=2)
    return aligned, sft


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


# ---- the update by hand ------------------------------------------------------------------------


def test_extrapolate_by_hand():
    a, s = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.5, 3.0, -1.0])
    # a + 0.5 (a - s) = [1 + 0.25, 2 - 0.5, -1 + 0]
    assert torch.equal(extrapolate(a, s, 0.5), torch.tensor([1.25, 1.5, -1.0]))
    assert torch.equal(extrapolate(a, s, 0.0), a)
    out = extrapolate({"w": a.to(torch.bfloat16), "step": torch.tensor([3])},
                      {"w": s.to(torch.bfloat16), "step": torch.tensor([1])}, 2.0)
    assert out["w"].dtype == torch.bfloat16        # 1 + 2 * 0.5 = 2; 2 + 2 * (-1) = 0
    assert out["w"].float().tolist() == [2.0, 0.0, -1.0]
    assert out["step"].tolist() == [3]             # integer buffers: the aligned model's
    with pytest.raises(W2SError, match="differ in shape"):
        extrapolate(a, torch.zeros(2), 0.1)
    with pytest.raises(W2SError, match="only in the sft one"):
        extrapolate({"w": a}, {"w": s, "v": s}, 0.1)


def test_in_place_path_equals_full_state_dicts_and_reads_each_tensor_once(pair):
    aligned, sft = pair
    files_a, files_s = TensorFiles(aligned), TensorFiles(sft)
    model, _ = load_causal_lm(str(aligned), device="cpu", dtype="fp32")
    extrapolate_into(model, files_a, files_s, 0.3)
    # every tensor of each checkpoint read exactly once, never a whole state dict
    assert files_a.reads == files_s.reads == len(files_a.keys()) > 5
    expected = extrapolate(_state(aligned), _state(sft), 0.3)
    got = model.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)
    extrapolate_into(model, files_a, files_s, 0.0)        # alpha 0 gives the aligned model back
    for key, value in _state(aligned).items():
        assert torch.equal(model.state_dict()[key], value)


def _adapter(base: Path, seed: int, path: Path) -> None:
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    model, _ = load_causal_lm(str(base), device="cpu", dtype="fp32")
    model = apply_lora(model, LoraSettings(r=4, alpha=8), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()},
              str(path))


def _merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    model, _ = load_causal_lm(str(base), device="cpu", dtype="fp32")
    model = apply_lora(model, LoraSettings(r=4, alpha=8), seed=0)
    set_peft_model_state_dict(model, load_file(str(adapter)))
    return {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.fixture(scope="module")
def macpo_run(pair, tmp_path_factory) -> Path:
    """A finished run directory of macpo's layout: the student's adapters after SFT and after
    iteration 2, over the base model ``strong``."""
    _, base = pair
    run = tmp_path_factory.mktemp("macpo-run")
    _adapter(base, 1, run / "init/adapters/student-pos.safetensors")
    _adapter(base, 2, run / "iter1/adapters/student-pos.safetensors")
    _adapter(base, 3, run / "iter2/adapters/student-pos.safetensors")
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "macpo", "strong": str(base),
                                                     "lora_r": 4, "lora_alpha": 8}))
    (run / "metrics.json").write_text("{}")
    return run


def test_adapter_pair_extrapolates_the_merged_weights(pair, macpo_run):
    _, base = pair
    p = resolve_pair(None, None, str(macpo_run))
    assert p.kind == "adapter" and p.scale == 2.0 and "iter2" in p.aligned
    assert "init" in p.sft and p.base == str(base)
    model, _ = load_causal_lm(str(base), device="cpu", dtype="fp32")
    extrapolate_adapters_into(model, TensorFiles(base), TensorFiles(p.aligned),
                              TensorFiles(p.sft), p.scale, 0.4)
    w_a, w_s = _merged(base, Path(p.aligned)), _merged(base, Path(p.sft))
    expected = extrapolate(w_a, w_s, 0.4)   # W_a + 0.4 (W_a - W_s), from peft's own merges
    got = model.state_dict()
    changed = 0
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)
        changed += not torch.equal(value, w_a[key])
    assert changed >= 2   # the adapted projections moved; the rest is the base


# ---- the CLI -------------------------------------------------------------------------------------


def test_cli_end_to_end_then_a_rerun_is_cached(pair, tmp_path, cache_dir, capsys, monkeypatch):
    aligned, sft = pair
    first = tmp_path / "first"
    code, _, err = run_cli(["expo", "--aligned", str(aligned), "--sft", str(sft), *FAST,
                            "--run-dir", str(first)], capsys)
    assert code == 0, err
    m = json.loads((first / "metrics.json").read_text())
    assert m["method"] == "expo" and m["headline"] == ["win_rate"]
    assert [r["alpha"] for r in m["alphas_table"]] == [0.0, 0.5, 1.0]
    for row in m["alphas_table"]:
        assert {"win_rate", "win_rate_se", "wins", "ties", "losses", "gold_reward"} <= set(row)
        assert row["wins"] + row["ties"] + row["losses"] == 4 and not row["cached"]
    assert m["alphas_table"][0]["win_rate"] == 50.0   # alpha 0 against itself: all ties
    assert m["selected_by"] == "gold_reward" and m["baseline_gold_reward"] is not None
    assert m["best_alpha"] in (0.0, 0.5, 1.0) and m["best_extrapolated_alpha"] in (0.5, 1.0)
    for name in ("generations/alpha-0.jsonl", "generations/alpha-0.5.jsonl",
                 "judgments-alpha-1.jsonl", "model/config.json"):
        assert (first / name).is_file(), name
    # the saved model is the best alpha's
    expected = extrapolate(_state(aligned), _state(sft), m["best_alpha"])
    saved = _state(first / "model")
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value)

    def forbidden(*a, **k):
        raise AssertionError("a rerun must take every alpha's answers from the cache")

    monkeypatch.setattr("w2s.models.generate.generate", forbidden)
    second = tmp_path / "second"
    code, _, err = run_cli(["expo", "--aligned", str(aligned), "--sft", str(sft), *FAST,
                            "--run-dir", str(second), "--no-save-best"], capsys)
    assert code == 0, err
    m2 = json.loads((second / "metrics.json").read_text())
    assert all(r["cached"] for r in m2["alphas_table"]) and not (second / "model").exists()
    assert [r["win_rate"] for r in m2["alphas_table"]] == [r["win_rate"]
                                                          for r in m["alphas_table"]]


def test_from_a_wspo_run_directory(pair, tmp_path, cache_dir, capsys):
    aligned, sft = pair
    run = tmp_path / "wspo-run"
    shutil.copytree(aligned, run / "model")
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "wspo", "strong": str(sft),
                                                     "save_model": True}))
    (run / "metrics.json").write_text("{}")
    out = tmp_path / "expo"
    code, _, err = run_cli(["expo", "--from-run", str(run), *FAST, "--alphas", "0.5",
                            "--run-dir", str(out)], capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["pair"]["aligned"] == str(run / "model") and m["pair"]["sft"] == str(sft)


def test_from_a_macpo_run_directory_through_the_cli(macpo_run, tmp_path, cache_dir, capsys):
    out = tmp_path / "expo"
    code, _, err = run_cli(["expo", "--from-run", str(macpo_run), *FAST, "--alphas", "0.5",
                            "--run-dir", str(out)], capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["pair"]["kind"] == "adapter" and m["pair"]["lora_scale"] == 2.0


# ---- bad input ---------------------------------------------------------------------------------


def _bad_inputs(root: Path, pair) -> dict[str, tuple[list[str], str]]:
    aligned, sft = pair
    wide = root / "wide"
    if not wide.exists():
        _perturbed("tiny:llama-1x64", wide, seed=3)
    no_model = root / "wspo-no-model"
    no_model.mkdir(exist_ok=True)
    (no_model / "config.yaml").write_text(yaml.safe_dump({"method": "wspo", "strong": str(sft),
                                                          "save_model": False}))
    (no_model / "metrics.json").write_text("{}")
    unfinished = root / "unfinished"
    unfinished.mkdir(exist_ok=True)
    (unfinished / "config.yaml").write_text("method: wspo\n")
    return {
        "architectures": (["--aligned", str(aligned), "--sft", str(wide)],
                          "different architectures: hidden_size 32 vs 64"),
        "no saved model": (["--from-run", str(no_model)],
                           "saved no model (<run>/model) (rerun it with --save-model)"),
        "unfinished": (["--from-run", str(unfinished)], "has not finished"),
        "no pair": (["--aligned", str(aligned)], "name the pair"),
        "same model": (["--aligned", str(aligned), "--sft", str(aligned)], "the same model"),
        "alpha": (["--aligned", str(aligned), "--sft", str(sft), "--alphas", "0,0.5"],
                  "--alphas must be > 0"),
    }


@pytest.mark.parametrize("case", ["architectures", "no saved model", "unfinished", "no pair",
                                  "same model", "alpha"])
def test_bad_input_is_one_line_exit_2_and_leaves_no_run_dir(case, pair, tmp_path, cache_dir,
                                                            capsys):
    flags, needle = _bad_inputs(tmp_path, pair)[case]
    run_dir = tmp_path / "run"
    base = [f for f in FAST if f not in ("--alphas", "0.5,1")] if "--alphas" in flags else FAST
    code, _, err = run_cli(["expo", *flags, *base, "--run-dir", str(run_dir)], capsys)
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not run_dir.exists()


def test_from_a_real_tiny_wspo_run(tmp_path, cache_dir, capsys):
    """A finished tiny ``w2s wspo`` run (its strong start, ``tiny:llama-2x32``, is a random tiny
    model: written once to the cache as a safetensors folder) is the pair; without
    --save-model the same run is refused."""
    wspo = ["wspo", "--weak", "tiny:llama-1x32", "--strong", "tiny:llama-2x32", "--task",
            "toy-preference", "--n-train", "8", "--n-eval", "4", "--judge", "vader", "--mode",
            "full", "--max-len", "64", "--max-new-tokens", "4", "--gen-batch-size", "8",
            "--weak-dpo-max-steps", "1", "--weak-dpo-batch-size", "8",
            "--weak-dpo-micro-batch-size", "8", "--strong-train-max-steps", "2",
            "--strong-train-batch-size", "8", "--strong-train-micro-batch-size", "8",
            "--strong-train-lr", "1e-2", "--seed", "3"]
    run = tmp_path / "wspo"
    code, _, err = run_cli([*wspo, "--run-dir", str(run)], capsys)
    assert code == 0, err
    out = tmp_path / "expo"
    code, _, err = run_cli(["expo", "--from-run", str(run), *FAST, "--alphas", "1",
                            "--run-dir", str(out)], capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["pair"]["sft"] == "tiny:llama-2x32" and m["pair"]["aligned"] == str(run / "model")
    # the start is the random tiny model as that run initialised it (its seed, 3)
    start, _ = load_causal_lm("tiny:llama-2x32", device="cpu", dtype="fp32", seed=3)
    trained = _state(run / "model")
    expected = extrapolate(trained, {k: v for k, v in start.state_dict().items()
                                     if k in trained}, m["best_alpha"])
    for key, value in expected.items():
        torch.testing.assert_close(_state(out / "model")[key], value)
    unsaved = tmp_path / "unsaved"
    assert run_cli([*wspo, "--no-save-model", "--run-dir", str(unsaved)], capsys)[0] == 0
    code, _, err = run_cli(["expo", "--from-run", str(unsaved), *FAST,
                            "--run-dir", str(tmp_path / "none")], capsys)
    assert code == 2 and "saved no model" in err and not (tmp_path / "none").exists()
