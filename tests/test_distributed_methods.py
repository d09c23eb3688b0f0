"""Methods under `torchrun --nproc_per_node 2 -m w2s ...` (two CPU processes over gloo).

What a data-parallel launch must guarantee: ONE run record (only rank 0 writes; the others
compute their own default run-dir names but never create them), ``world_size`` recorded, and,
for the same global batch, the loss curve of one process within float tolerance; under DDP,
and under FSDP2 and DeepSpeed ZeRO-3 with recipes/accelerate/fsdp.yaml's and
deepspeed-zero3.yaml's settings. (accelerate launch --cpu
--num_processes 2 starts a single process on a CPU machine; torchrun starts two.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import ROOT, launch_env, need_deepspeed, needs_torchrun, read_jsonl, run_processes

pytestmark = needs_torchrun

LAUNCHES = {"ddp": None, "fsdp": "fsdp.yaml", "deepspeed": "deepspeed-zero3.yaml"}


def _run(args: list[str], cwd: Path, cache: Path, nproc: int, launch: str = "ddp") -> None:
    env = {"W2S_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    if LAUNCHES[launch]:  # what `accelerate launch --config_file recipes/accelerate/X` sets
        if launch == "deepspeed":
            need_deepspeed()
        env.update(launch_env(LAUNCHES[launch], nproc))
    run_processes(["-m", "w2s", *args], nproc, env=env, cwd=cwd, timeout=300)


def _two_process_record(args: list[str], folder: Path, cache: Path, launch: str) -> Path:
    """``args`` in two processes under ``launch``, run in ``folder`` into the default run dir
    (under runs/): that run dir, after checking it is the only one."""
    folder.mkdir(exist_ok=True)
    _run(args, folder, cache, nproc=2, launch=launch)
    runs = list((folder / "runs" / args[0]).iterdir())
    assert len(runs) == 1  # rank 1 never created its own directory
    return runs[0]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _step_losses(run_dir: Path) -> list[tuple]:
    return [(rec.get("stage"), rec.get("model"), rec["step"], rec["loss"])
            for rec in read_jsonl(run_dir / "log.jsonl") if "loss" in rec and "step" in rec]


GENERALIZE = ["generalize", "--recipe", str(ROOT / "recipes/generalize/tiny.yaml"),
              "--loss", "xent", "--entities", "240", "--n-train", "192", "--n-test", "48",
              "--pretrain-steps", "30", "--weak-train-epochs", "4", "--strong-train-epochs", "4"]


def _one_process(args: list[str], folder: Path) -> Path:
    """The reference: the same command in one process; its run directory."""
    _run(args + ["--run-dir", str(folder / "run")], folder, folder / "cache", nproc=1)
    return folder / "run"


@pytest.fixture(scope="module")
def generalize_one(tmp_path_factory) -> Path:
    return _one_process(GENERALIZE, tmp_path_factory.mktemp("generalize-one"))


@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_generalize_two_processes_one_record_same_curve(launch, generalize_one, tmp_path):
    two = _two_process_record(GENERALIZE, tmp_path / "two", tmp_path / "cache2", launch)
    m1, m2 = _metrics(generalize_one), _metrics(two)
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    env2 = json.loads((two / "env.json").read_text())
    assert env2["world_size"] == 2
    c1, c2 = _step_losses(generalize_one), _step_losses(two)
    assert [c[:3] for c in c1] == [c[:3] for c in c2] and len(c1) > 20
    for a, b in zip(c1, c2, strict=True):
        assert b[3] == pytest.approx(a[3], rel=1e-2, abs=1e-3), (a, b)
    for key in ("weak_acc", "strong_ceiling_acc", "w2s_acc"):
        assert abs(m1[key] - m2[key]) <= 1 / 48 + 1e-9  # at most one test example apart


WSPO = ["wspo", "--recipe", str(ROOT / "recipes/wspo/tiny.yaml"),
        "--weak", "tiny:llama-1x32+toy-preference@30", "--strong", "tiny:llama-2x32+toy-preference@30",
        "--n-train", "64", "--n-eval", "8", "--samples-per-prompt", "1", "--max-new-tokens", "16",
        "--max-len", "128", "--weak-dpo-max-steps", "4", "--strong-train-max-steps", "6",
        "--weak-dpo-batch-size", "16", "--strong-train-batch-size", "16",
        "--weak-dpo-micro-batch-size", "8", "--strong-train-micro-batch-size", "8"]


@pytest.fixture(scope="module")
def wspo_one(tmp_path_factory) -> Path:
    return _one_process(WSPO, tmp_path_factory.mktemp("wspo-one"))


@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_wspo_two_processes_one_record_same_curve(launch, wspo_one, tmp_path):
    """Weak DPO and WSPO training, global batch 16: one process accumulates two micro-batches
    of 8, two processes take 8 each (whole models under DDP, shards under FSDP and ZeRO-3);
    the weak log-ratios and reference are computed on rank 0's cache entry and read by both."""
    two = _two_process_record(WSPO, tmp_path / "two", tmp_path / "cache2", launch)
    m1, m2 = _metrics(wspo_one), _metrics(two)
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    c1, c2 = _step_losses(wspo_one), _step_losses(two)
    assert [c[0] for c in c1].count("wspo") == 6 and [c[:3] for c in c1] == [c[:3] for c in c2]
    for a, b in zip(c1, c2, strict=True):
        assert b[3] == pytest.approx(a[3], rel=1e-3, abs=1e-6), (a, b)


MACPO = ["macpo", "--weak", "tiny:llama-1x32+toy-preference@5,tiny:gpt2-1x32+toy-preference@5",
         "--strong", "tiny:llama-2x32+toy-preference@5", "--task", "toy-preference",
         "--iterations", "1", "--n-train", "24", "--n-test", "6", "--judge", "vader",
         "--sft-max-steps", "2", "--dpo-max-steps", "2", "--sft-batch-size", "8",
         "--sft-micro-batch-size", "4", "--dpo-batch-size", "4", "--dpo-micro-batch-size", "2",
         "--max-new-tokens", "8", "--max-len", "96", "--generation-batch-size", "16"]
DECEPTION = ["deception", "--weak", "tiny:llama-1x32", "--strong", "tiny:llama-2x32",
             "--task", "toy-harmless", "--n-train", "48", "--n-test", "16", "--max-steps", "2",
             "--batch-size", "8", "--micro-batch-size", "4", "--lr", "1e-3", "--max-ctx", "48",
             "--eval-batch-size", "16"]


REASON = ["reason", "--weak", "tiny:llama-1x32", "--strong", "tiny:llama-2x32",
          "--task", "toy-arithmetic", "--n-weak-train", "16", "--n-w2s", "16", "--n-test", "8",
          "--selection", "all", "--stage2", "none", "--mode", "full", "--max-len", "160",
          "--max-new-tokens", "8", "--n-boot", "20", "--weak-sft-max-steps", "2",
          "--weak-sft-batch-size", "8", "--weak-sft-micro-batch-size", "4",
          "--strong-sft-max-steps", "2", "--strong-sft-batch-size", "8",
          "--strong-sft-micro-batch-size", "4"]


@pytest.mark.parametrize(("args", "launch", "trainings"),
                         [(MACPO, "deepspeed", 9), (DECEPTION, "fsdp", 5), (REASON, "ddp", 3)],
                         ids=["macpo-deepspeed", "deception-fsdp", "reason-ddp"])
def test_the_other_methods_train_under_a_sharded_launch(args, launch, trainings, tmp_path):
    """MACPO (LoRA agents on shared bases, generation on rank 0 between trainings) under
    ZeRO-3, deception (reward models) under FSDP: one run record, world_size 2, and every
    training (MACPO: 6 SFT + 3 DPO; deception: 2 ceilings + 3 W2S; reason under DDP: the weak
    SFT, full weak fine-tuning and the ceiling, generation between them) ran its 2 steps."""
    run_dir = _two_process_record(args, tmp_path, tmp_path / "cache", launch)
    metrics = _metrics(run_dir)
    assert metrics["status"] == "ok" and metrics["world_size"] == 2
    steps: dict[tuple, list[int]] = {}
    for stage, model, step, loss in _step_losses(run_dir):
        assert math.isfinite(loss)
        steps.setdefault((stage, model), []).append(step)
    assert len(steps) == trainings and all(s == [1, 2] for s in steps.values()), steps
