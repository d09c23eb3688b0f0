"""The training loop: schedule, batching arithmetic, resume, frozen parameters, errors.

Models are tiny (a linear layer, a small MLP with dropout, a 2-layer Llama) built in-process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from w2s.errors import W2SError
from w2s.train import TrainConfig, lm_loss, lr_lambda, read_checkpoint, train
from w2s.train.loop import _micro_batches

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------------------------
# helpers


def regression_data(n: int = 24, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return [{"x": x[i], "y": y[i], "id": i} for i in range(n)]


def collate(items):
    return {"x": torch.stack([it["x"] for it in items]),
            "y": torch.stack([it["y"] for it in items])}


def mse(model, batch):
    return ((model(batch["x"]) - batch["y"]) ** 2).mean(dim=-1)


class MLP(torch.nn.Module):
    """Hidden layer + dropout: the dropout makes RNG state part of what resume must restore."""

    def __init__(self, d: int = 4, hidden: int = 16, dropout: float = 0.1):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.Tanh(),
                                        torch.nn.Dropout(dropout))
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.body(x))


def mlp(seed: int = 0, dropout: float = 0.1) -> MLP:
    torch.manual_seed(seed)
    return MLP(dropout=dropout)


def cfg(**kw) -> TrainConfig:
    base = dict(lr=1e-2, batch_size=8, micro_batch_size=8, epochs=1.0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(model, data, config, **kw):
    kw.setdefault("progress", False)
    return train(model, data, loss_fn=mse, collate=collate, config=config, **kw)


# --------------------------------------------------------------------------------------------
# schedule


def test_lr_lambda_hand_computed_values():
    # (step, total steps, warm-up steps, scheduler) and the factor worked out by hand
    by_hand = [
        # cosine, no warm-up, 10 steps: 1 at the start, 1/2 half-way, (1 + cos(0.9 pi)) / 2 last
        ((0, 10, 0, "cosine"), 1.0), ((5, 10, 0, "cosine"), 0.5),
        ((9, 10, 0, "cosine"), 0.0244717418), ((10, 10, 0, "cosine"), 0.0),
        # linear: 1 - step / total
        ((0, 10, 0, "linear"), 1.0), ((2, 10, 0, "linear"), 0.8), ((9, 10, 0, "linear"), 0.1),
        # warm-up over 2 of 10 steps: 1/2, 1, then the decay over the remaining 8 steps
        ((0, 10, 2, "cosine"), 0.5), ((1, 10, 2, "cosine"), 1.0), ((2, 10, 2, "cosine"), 1.0),
        ((6, 10, 2, "cosine"), 0.5), ((6, 10, 2, "linear"), 0.5),
        ((0, 10, 4, "constant"), 0.25), ((3, 10, 4, "constant"), 1.0),
    ]
    for args, factor in by_hand:
        assert lr_lambda(*args) == pytest.approx(factor), args
    # constant
    assert lr_lambda(7, 10, 0, "constant") == 1.0
    with pytest.raises(ValueError):
        lr_lambda(5, 10, 0, "exponential")


def test_logged_lr_follows_schedule_with_warmup():
    records = []
    config = cfg(max_steps=10, warmup_ratio=0.2, scheduler="linear", lr=0.1)
    run(mlp(), regression_data(), config, log=records.append)
    lrs = [r["lr"] for r in records]
    expected = [0.1 * lr_lambda(s, 10, 2, "linear") for s in range(10)]
    assert lrs == pytest.approx(expected)
    assert [r["step"] for r in records] == list(range(1, 11))


def test_train_config_fields_have_help():
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no help text"


# --------------------------------------------------------------------------------------------
# learning


def test_training_reduces_loss_on_regression():
    data = regression_data(64)
    model = mlp(dropout=0.0)
    result = run(model, data, cfg(lr=3e-2, epochs=30, batch_size=16, micro_batch_size=8))
    assert result.steps == 30 * 4
    assert result.examples_seen == 30 * 64
    assert result.final_loss < 0.1 * result.losses[0]
    assert result.world_size == 1 and result.global_batch == 16 and result.grad_accum == 2


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64))


def copy_task(n: int = 16):
    """Prompt of 4 random tokens, then a response that repeats it: learnable."""
    g = torch.Generator().manual_seed(1)
    return [torch.cat([p, p]) for p in (torch.randint(3, 64, (4,), generator=g) for _ in range(n))]


def lm_collate(items):
    ids = torch.stack(items)
    mask = torch.zeros_like(ids)
    mask[:, 4:] = 1  # score the response only
    return {"input_ids": ids, "mask": mask}


def causal_lm_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits
    return lm_loss(logits[:, :-1], batch["input_ids"][:, 1:], batch["mask"][:, 1:])


def test_training_reduces_lm_loss_on_tiny_llama():
    result = train(tiny_llama(), copy_task(), loss_fn=causal_lm_loss, collate=lm_collate,
                   progress=False, config=cfg(lr=1e-2, epochs=25, batch_size=8,
                                              micro_batch_size=4, scheduler="constant"))
    assert result.final_loss < 0.5 * result.losses[0]


def test_gradient_checkpointing_changes_memory_not_results():
    runs = []
    for checkpointing in (False, True):
        model = tiny_llama()
        result = train(model, copy_task(), loss_fn=causal_lm_loss, collate=lm_collate,
                       progress=False, config=cfg(lr=1e-2, max_steps=4, micro_batch_size=4,
                                                  gradient_checkpointing=checkpointing))
        assert not model.is_activation_checkpointing  # switched off again afterwards
        runs.append((result.losses, weights(model)))
    assert runs[1][0] == pytest.approx(runs[0][0], abs=1e-6)
    for k, v in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][k], v, rtol=0, atol=1e-6)


def test_lora_trains_only_the_adapters(tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    before = weights(model)
    train(model, copy_task(), loss_fn=causal_lm_loss, collate=lm_collate, progress=False,
          config=cfg(lr=1e-2, max_steps=3, micro_batch_size=4), checkpoint_dir=tmp_path)
    after = weights(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_B" in k or "lora_A" in k for k in changed)
    saved = set(load_file(str(read_checkpoint(tmp_path)[0] / "trainable.safetensors")))
    assert saved == {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(saved) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)


# --------------------------------------------------------------------------------------------
# batching arithmetic


def test_gradient_accumulation_gives_the_same_weights():
    data = regression_data(20)  # steps of 8, 8, 4 examples
    for optimizer in ("sgd", "adamw"):  # sgd: a wrongly scaled gradient would change the result
        finals, norms = [], []
        for micro in (8, 2, 1):
            model = mlp(dropout=0.0)
            records = []
            run(model, data, cfg(optimizer=optimizer, micro_batch_size=micro, epochs=2),
                log=records.append)
            finals.append(weights(model))
            norms.append([r["grad_norm"] for r in records])
        for other, other_norms in zip(finals[1:], norms[1:], strict=True):
            assert other_norms == pytest.approx(norms[0], rel=1e-5)
            for k in finals[0]:
                torch.testing.assert_close(other[k], finals[0][k], rtol=0, atol=1e-6)


def test_partial_last_batch_is_kept_and_weighted_as_its_own_mean():
    data = regression_data(10)
    seen: list[int] = []

    def recording_collate(items):
        seen.extend(it["id"] for it in items)
        return collate(items)

    # plain SGD, constant lr, no clipping: one step is w -= lr * grad(mean loss of its examples)
    config = cfg(optimizer="sgd", scheduler="constant", max_grad_norm=None, lr=0.1,
                 batch_size=8, micro_batch_size=4)
    model = torch.nn.Linear(4, 1)
    start = weights(model)
    result = train(model, data, loss_fn=mse, collate=recording_collate, config=config,
                   progress=False)
    assert result.steps == 2 and result.examples_seen == 10
    assert sorted(seen) == list(range(10))  # every example exactly once

    # replay by hand: step 1 on the first 8 of the permutation, step 2 on the last 2
    order = seen
    ref = torch.nn.Linear(4, 1)
    ref.load_state_dict(start)
    for ids in (order[:8], order[8:]):
        ref.zero_grad()
        mse(ref, collate([data[i] for i in ids])).mean().backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= 0.1 * p.grad
    for k, v in weights(ref).items():
        torch.testing.assert_close(weights(model)[k], v, rtol=0, atol=1e-6)
    # the logged loss of the partial step is the mean over its 2 examples, not over 8
    assert result.losses[1] == pytest.approx(
        float(mse(_after_first_step(start, data, order),
                  collate([data[i] for i in order[8:]])).mean().detach()),
        rel=1e-5)


def _after_first_step(start, data, order):
    m = torch.nn.Linear(4, 1)
    m.load_state_dict(start)
    mse(m, collate([data[i] for i in order[:8]])).mean().backward()
    with torch.no_grad():
        for p in m.parameters():
            p -= 0.1 * p.grad
    return m


def test_micro_batches_deal_examples_across_processes():
    step = list(range(8))
    assert _micro_batches(step, 0, 1, 2) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert _micro_batches(step, 0, 2, 2) == [[0, 2], [4, 6]]
    assert _micro_batches(step, 1, 2, 2) == [[1, 3], [5, 7]]
    # partial step of 5 on 2 processes: rank 1 has one micro-batch fewer -> an empty one
    assert _micro_batches(step[:5], 0, 2, 2) == [[0, 2], [4]]
    assert _micro_batches(step[:5], 1, 2, 2) == [[1, 3], []]


def test_fractional_epochs_and_max_steps():
    data = regression_data(20)  # 3 steps per epoch at batch 8 (8, 8, 4)
    assert run(mlp(), data, cfg(epochs=0.5)).steps == 2  # ceil(1.5)
    assert run(mlp(), data, cfg(epochs=2)).steps == 6
    result = run(mlp(), data, cfg(epochs=1, max_steps=5))  # max_steps wins, crosses an epoch
    assert result.steps == 5 and result.examples_seen == 8 + 8 + 4 + 8 + 8


def test_batch_size_must_split_into_micro_batches():
    with pytest.raises(W2SError, match=r"micro_batch_size in \[1, 2, 4, 8\]"):
        run(mlp(), regression_data(), cfg(batch_size=8, micro_batch_size=3))


def test_config_errors_are_user_errors():
    with pytest.raises(W2SError, match="did you mean 'adamw'"):
        run(mlp(), regression_data(), cfg(optimizer="adamww"))
    with pytest.raises(W2SError, match="warmup_ratio"):
        run(mlp(), regression_data(), cfg(warmup_ratio=1.5))
    with pytest.raises(W2SError, match="no training examples"):
        run(mlp(), [], cfg())
    with pytest.raises(W2SError, match="pip install tensorboard"):
        run(mlp(), regression_data(), cfg(report_to="tensorboard"))


def test_accelerator_that_would_train_differently_is_refused(monkeypatch):
    from types import SimpleNamespace

    from w2s.train.launch import check_accelerator as _check_accelerator

    alone = SimpleNamespace(num_processes=1, gradient_accumulation_steps=1, mixed_precision="no")
    _check_accelerator(alone, cfg())
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun launched 2, accelerate joined none
    with pytest.raises(W2SError, match="each process would train alone"):
        _check_accelerator(alone, cfg())
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(W2SError, match="mixed_precision=no but the config says bf16"):
        _check_accelerator(alone, cfg(mixed_precision="bf16"))
    with pytest.raises(ValueError, match="accumulates itself"):
        _check_accelerator(SimpleNamespace(num_processes=1, gradient_accumulation_steps=4,
                                           mixed_precision="no"), cfg())
    from accelerate.utils import DistributedType

    def launched(kind, fsdp2=True):
        return SimpleNamespace(num_processes=1, gradient_accumulation_steps=1,
                               mixed_precision="no", distributed_type=kind, is_fsdp2=fsdp2)

    _check_accelerator(launched(DistributedType.DEEPSPEED), cfg())
    with pytest.raises(W2SError, match="set fsdp_version: 2"):
        _check_accelerator(launched(DistributedType.FSDP, fsdp2=False), cfg())
    _check_accelerator(launched(DistributedType.FSDP), cfg())
    _check_accelerator(launched(DistributedType.MULTI_GPU), cfg())


@pytest.mark.parametrize(("env", "fix"), [
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true"},
     "set zero3_init_flag: false"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "set fsdp_version: 2"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
      "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, "set fsdp_cpu_ram_efficient_loading: false"),
])
def test_a_launch_the_loop_cannot_run_is_refused_before_any_work(env, fix, monkeypatch,
                                                                 tmp_path, capsys):
    """`accelerate launch --config_file X.yaml -m w2s ...` says what X asks for in these
    variables: a config the loop cannot run stops the method command at once with the fix,
    and no run directory is made."""
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    code, _, err = run_cli(["generalize", "--weak", "tiny:llama-1x32", "--strong",
                            "tiny:llama-2x32", "--task", "toy-sentiment",
                            "--run-dir", str(tmp_path / "run")], capsys)
    err = err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and fix in err
    assert not (tmp_path / "run").exists()


def test_shipped_accelerate_configs_parse():
    """Every config under recipes/accelerate is one accelerate's own config class reads."""
    from pathlib import Path

    from accelerate.commands.config.config_args import ClusterConfig

    folder = Path(__file__).resolve().parent.parent / "recipes" / "accelerate"
    kinds = {}
    for path in sorted(folder.glob("*.yaml")):
        config = ClusterConfig.from_yaml_file(str(path))
        kinds[path.name] = str(config.distributed_type).rsplit(".", 1)[-1]
    assert kinds == {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP",
                     "deepspeed-zero3.yaml": "DEEPSPEED"}


def test_loss_fn_must_return_per_example_losses():
    with pytest.raises(ValueError, match=r"one loss per example \(shape \[8\]\)"):
        train(mlp(), regression_data(), loss_fn=lambda m, b: mse(m, b).mean(), collate=collate,
              config=cfg(), progress=False)


def test_dict_output_metrics_are_averaged_over_the_step():
    records = []

    def loss_fn(model, batch):
        losses = mse(model, batch)
        # a scalar per micro-batch and a per-example tensor: both logged as the step mean
        return {"loss": losses, "batch_mean_y": batch["y"].mean(), "y": batch["y"][:, 0]}

    data = regression_data(10)
    train(mlp(), data, loss_fn=loss_fn, collate=collate, progress=False, log=records.append,
          config=cfg(batch_size=8, micro_batch_size=2, epochs=1))
    mean_y = float(torch.stack([d["y"] for d in data]).mean())
    # over the whole epoch (8 + 2 examples) the step means, weighted by step size, give the mean
    total = records[0]["batch_mean_y"] * 8 + records[1]["batch_mean_y"] * 2
    assert total / 10 == pytest.approx(mean_y, rel=1e-5)
    assert [r["y"] for r in records] == pytest.approx([r["batch_mean_y"] for r in records])
    assert set(records[0]) >= {"step", "epoch", "loss", "lr", "grad_norm", "examples_seen"}
    assert records[-1]["epoch"] == pytest.approx(1.0) and records[-1]["examples_seen"] == 10


# --------------------------------------------------------------------------------------------
# frozen parameters and checkpoints


def test_loss_fn_with_a_third_argument_gets_the_step(tmp_path):
    """20 examples, batch 8, micro 4, 2 epochs: 6 steps of 2 (the last of an epoch: 1) micro-
    batches. A loss with a third parameter is told the step; a resumed training goes on
    counting from the checkpoint's step."""
    seen = []

    def loss_fn(model, batch, step):
        seen.append((step.index, step.total, step.micro, step.micro_batches))
        return mse(model, batch)

    config = cfg(epochs=2, micro_batch_size=4, checkpoint_every=2)
    with pytest.raises(Stop):
        train(mlp(), regression_data(20), loss_fn=loss_fn, collate=collate, config=config,
              checkpoint_dir=tmp_path, progress=False, log=stop_at(3))
    # one call per micro-batch: (step, total, micro, micro-batches of the step)
    assert seen == [(0, 6, 0, 2), (0, 6, 1, 2), (1, 6, 0, 2), (1, 6, 1, 2), (2, 6, 0, 1)]
    seen.clear()
    train(mlp(), regression_data(20), loss_fn=loss_fn, collate=collate, config=config,
          checkpoint_dir=tmp_path, progress=False)
    assert [s[0] for s in seen] == [2, 3, 3, 4, 4, 5]  # resumed at the checkpoint of step 2


def test_training_counts_its_tokens_into_the_compute_stage():
    from w2s import compute

    def padded(items):  # 8 tokens per example, the last 2 of them padding
        batch = lm_collate(items)
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        batch["attention_mask"][:, -2:] = 0
        return batch

    config = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=2, max_steps=3)
    compute.reset()
    with compute.stage("fit"):
        train(tiny_llama(), copy_task(), loss_fn=causal_lm_loss, collate=padded, config=config,
              progress=False)
        with compute.stage("plain ids"):  # no attention mask: every token id counts
            train(tiny_llama(), copy_task(), loss_fn=causal_lm_loss, collate=lm_collate,
                  config=config, progress=False)
    stages = compute.record()["stages"]
    # 3 steps x 4 examples x 6 real tokens, forward and backward
    assert stages["fit"]["forward_tokens"] == stages["fit"]["backward_tokens"] == 72
    assert stages["plain ids"]["forward_tokens"] == 3 * 4 * 8


def test_frozen_parameters_stay_frozen_and_are_not_checkpointed(tmp_path):
    model = mlp()
    model.body.requires_grad_(False)
    before = weights(model)
    run(model, regression_data(), cfg(epochs=2), checkpoint_dir=tmp_path)
    after = weights(model)
    for k in before:
        if k.startswith("body."):
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["head.weight"], after["head.weight"])

    from safetensors.torch import load_file

    path, state = read_checkpoint(tmp_path)
    assert set(load_file(str(path / "trainable.safetensors"))) == {"head.weight", "head.bias"}
    assert state["done"] is True and state["step"] == 6


def test_checkpoint_keeps_only_the_latest(tmp_path):
    run(mlp(), regression_data(24), cfg(epochs=2, checkpoint_every=2), checkpoint_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["latest", "step-00000006-done"]
    path = tmp_path / "step-00000006-done"
    assert sorted(p.name for p in path.iterdir()) == [
        "optimizer.pt", "state.pt", "trainable.safetensors", "trainer_state.json"]
    state = json.loads((path / "trainer_state.json").read_text())
    assert state["step"] == state["total_steps"] == 6 and len(state["losses"]) == 6
    assert state["global_batch"] == 8 and state["world_size"] == 1
    assert state["config"]["checkpoint_every"] == 2


class Stop(Exception):
    pass


def stop_at(step):
    def log(record):
        if record["step"] == step:
            raise Stop

    return log


@pytest.mark.parametrize("checkpoint_every", [2, 0])
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, checkpoint_every):
    data = regression_data(20)  # 3 steps per epoch: checkpoint_every=0 saves at steps 3 and 6
    config = cfg(epochs=2, checkpoint_every=checkpoint_every, warmup_ratio=0.2)

    reference = mlp()
    ref_result = run(reference, data, config)

    interrupted = mlp()
    with pytest.raises(Stop):
        run(interrupted, data, config, checkpoint_dir=tmp_path, log=stop_at(5))
    saved_at = read_checkpoint(tmp_path)[1]["step"]
    assert saved_at == (4 if checkpoint_every == 2 else 3)

    torch.manual_seed(123)  # a re-run starts with other RNG states; the checkpoint restores them
    rerun = mlp()  # a fresh process builds the model again
    result = run(rerun, data, config, checkpoint_dir=tmp_path)
    assert result.resumed_from == saved_at and result.steps == 6
    assert result.losses == ref_result.losses
    for k, v in weights(reference).items():
        assert torch.equal(weights(rerun)[k], v), k  # bitwise on CPU

    # finished: a third call loads the final weights without training
    def must_not_run(model, batch):
        raise AssertionError("training ran again")

    again = mlp(seed=7)
    done = train(again, data, loss_fn=must_not_run, collate=collate, config=config,
                 checkpoint_dir=tmp_path, progress=False)
    assert done.resumed_from == 6 and done.losses == ref_result.losses
    for k, v in weights(reference).items():
        assert torch.equal(weights(again)[k], v), k


def test_resume_refuses_another_setup(tmp_path):
    data = regression_data(20)
    with pytest.raises(Stop):
        run(mlp(), data, cfg(epochs=2, checkpoint_every=1), checkpoint_dir=tmp_path,
            log=stop_at(2))
    with pytest.raises(W2SError, match=r"lr=0.01, now 0.02"):
        run(mlp(), data, cfg(epochs=2, checkpoint_every=1, lr=2e-2), checkpoint_dir=tmp_path)
    with pytest.raises(W2SError, match="20 examples, now 19"):
        run(mlp(), data[:19], cfg(epochs=2, checkpoint_every=1), checkpoint_dir=tmp_path)
    with pytest.raises(W2SError, match="max_steps=None, now 6"):  # extending is another schedule
        run(mlp(), data, cfg(epochs=2, checkpoint_every=1, max_steps=6), checkpoint_dir=tmp_path)
    frozen = mlp()
    frozen.body.requires_grad_(False)
    with pytest.raises(W2SError, match="other trainable parameters"):
        run(frozen, data, cfg(epochs=2, checkpoint_every=1), checkpoint_dir=tmp_path)
    # a DeepSpeed checkpoint (the engine's state) resumes under DeepSpeed only: refused before
    # the model is touched
    engine = read_checkpoint(tmp_path)[0] / "deepspeed"
    engine.mkdir()
    model = mlp()
    before = weights(model)
    with pytest.raises(W2SError, match="written by a DeepSpeed launch; resume it with that"):
        run(model, data, cfg(epochs=2, checkpoint_every=1), checkpoint_dir=tmp_path)
    assert all(torch.equal(weights(model)[k], v) for k, v in before.items())
    engine.rmdir()
    # settings that do not change what is learned may differ (another GPU count, say)
    result = run(mlp(), data, cfg(epochs=2, checkpoint_every=3, micro_batch_size=4, log_every=2),
                 checkpoint_dir=tmp_path)
    assert result.resumed_from == 2 and result.steps == 6


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, json
    import torch
    sys.path.insert(0, {tests!r})
    from test_train_loop import mlp, regression_data, cfg, run

    ckpt, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def log(record):
        if record["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a real kill

    model = mlp()
    result = run(model, regression_data(20), cfg(epochs=3, checkpoint_every=2), checkpoint_dir=ckpt,
                 log=log)
    torch.save(model.state_dict(), out)
    print(json.dumps({{"resumed_from": result.resumed_from, "losses": result.losses}}))
""")


def test_killed_process_resumes_to_the_same_weights(tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(ckpt, out, kill_at):
        return subprocess.run([sys.executable, str(script), str(ckpt), str(out), str(kill_at)],
                              capture_output=True, text=True, env=env, timeout=120)

    killed = launch(tmp_path / "ck", tmp_path / "a.pt", 5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert read_checkpoint(tmp_path / "ck")[1]["step"] == 4
    resumed = launch(tmp_path / "ck", tmp_path / "a.pt", -1)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["resumed_from"] == 4

    reference = mlp()  # the same run in this process, never interrupted
    run(reference, regression_data(20), cfg(epochs=3, checkpoint_every=2))
    got = torch.load(tmp_path / "a.pt")
    for k, v in reference.state_dict().items():
        assert torch.equal(got[k], v), k


# --------------------------------------------------------------------------------------------
# lm_loss


def test_lm_loss_matches_cross_entropy_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    labels[mask == 0] = -100  # never read

    got = lm_loss(logits, labels, mask)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0),
                                           reduction="none")
    expected = (ce * mask).sum(1) / mask.sum(1).clamp_min(1)
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=1e-6)
    assert got[2] == 0  # nothing scored: 0, not NaN

    (g1,) = torch.autograd.grad((got * torch.tensor([1.0, 2.0, 3.0])).sum(), logits)
    (g2,) = torch.autograd.grad((expected * torch.tensor([1.0, 2.0, 3.0],
                                                         dtype=torch.float64)).sum(), logits)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)


def test_lm_loss_is_fp32_and_chunked_for_bf16_logits():
    from w2s.train.losses import token_nll

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 50, generator=g).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 50, (37,), generator=g)
    small_chunks = token_nll(logits, labels, chunk=8)
    assert small_chunks.dtype == torch.float32
    expected = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    torch.testing.assert_close(small_chunks, expected, rtol=1e-6, atol=1e-6)
    small_chunks.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    ref = logits.detach().float().requires_grad_()
    torch.nn.functional.cross_entropy(ref, labels, reduction="sum").backward()
    torch.testing.assert_close(logits.grad.float(), ref.grad, rtol=1e-2, atol=1e-2)
    assert math.isfinite(float(small_chunks.detach().sum()))


def test_fsdp_refuses_a_quantized_model_before_any_work():
    """bitsandbytes weights (Params4bit / Int8Params) cannot be sharded by w2s's FSDP path:
    one line pointing at ddp.yaml, before the model is copied or touched."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    class Params4bit(torch.nn.Parameter):  # the class name is what the loop recognises
        pass

    model = mlp()
    model.body[0].weight = Params4bit(model.body[0].weight.detach().clone(), requires_grad=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fsdp = SimpleNamespace(num_processes=1, process_index=0, is_main_process=True,
                           device=torch.device("cpu"), gradient_accumulation_steps=1,
                           mixed_precision="no", distributed_type=DistributedType.FSDP,
                           is_fsdp2=True)
    with pytest.raises(W2SError, match="bitsandbytes-quantized model under FSDP.*ddp.yaml"):
        train(model, regression_data(), loss_fn=mse, collate=collate, config=cfg(),
              progress=False, accelerator=fsdp)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
