"""Sharded training with the shipped recipes/accelerate/fsdp.yaml (FSDP2) and
deepspeed-zero3.yaml (DeepSpeed ZeRO-3), on two CPU processes (torchrun, gloo).

The environment is the one ``accelerate launch --config_file recipes/accelerate/X.yaml`` gives
each process (built with accelerate's own launch code), so the tests check the shipped configs.
A tiny Llama trains with its embeddings frozen (frozen and trainable parameters are sharded
side by side, as under LoRA) and gradient clipping on. What must hold:

- the same global batch trains like one plain process: the same losses, gradient norms and
  final weights, within float tolerance;
- the caller's model comes back a plain module with the trained weights, so rank 0 alone can
  run it afterwards (a collective there would hang);
- resumption: a run killed under one process resumes under FSDP (one checkpoint format), and
  a run killed under the sharded launch resumes under it, ending where the uninterrupted run
  ends. DeepSpeed checkpoints hold the engine's own state: they resume under DeepSpeed only.

DeepSpeed is an optional extra: its tests skip without it, except under ``make test`` (and so
CI), which installs it and sets W2S_REQUIRE_DEEPSPEED=1.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import (
    ROOT,
    TOY_SEQUENCES,
    launch_env,
    need_deepspeed,
    needs_torchrun,
    run_processes,
)

pytestmark = needs_torchrun

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from w2s.train import TrainConfig, end_launch, lm_loss, make_accelerator, train

    out, crash_at = sys.argv[1], int(sys.argv[2])
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, tie_word_embeddings=False))
    model.model.embed_tokens.weight.requires_grad_(False)
""") + TOY_SEQUENCES + textwrap.dedent("""
    def collate(items):
        return {"input_ids": torch.stack(items)}

    calls, trained_as = [0], set()
    def loss_fn(m, batch):
        calls[0] += 1
        w = m.module.lm_head.weight if hasattr(m, "module") else m.lm_head.weight
        # FSDP2: a DTensor; ZeRO-3: a parameter whose data is an empty placeholder
        trained_as.add(type(w).__name__ if w.numel() else "partitioned")
        if calls[0] == crash_at:
            raise RuntimeError("killed")
        ids = batch["input_ids"]
        logits = m(input_ids=ids).logits
        return lm_loss(logits[:, :-1], ids[:, 1:], torch.ones_like(ids[:, 1:]))

    config = TrainConfig(lr=1e-2, epochs=2, batch_size=8, micro_batch_size=int(sys.argv[3]),
                         checkpoint_every=2, warmup_ratio=0.2, max_grad_norm=0.5,
                         mixed_precision=sys.argv[4])
    accelerator = make_accelerator(config)
    records = []
    try:
        result = train(model, seqs, loss_fn=loss_fn, collate=collate, config=config,
                       checkpoint_dir=os.path.join(out, "ckpt"), progress=False,
                       accelerator=accelerator, log=records.append)
    except RuntimeError as e:
        assert str(e) == "killed"
        end_launch(0)
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    from torch.distributed.fsdp import FSDPModule
    plain = not any(isinstance(m, FSDPModule) for m in model.modules())
    plain = plain and all(type(p) is torch.nn.Parameter and p.numel() > 0
                          for p in model.parameters())
    if rank == 0:  # rank 0 alone: a collective would hang here
        with torch.no_grad():
            alone = model.generate(seqs[0][None, :4], max_new_tokens=4, do_sample=False,
                                   attention_mask=torch.ones(1, 4, dtype=torch.long))
        json.dump({"losses": result.losses, "world_size": result.world_size, "kind": kind,
                   "resumed_from": result.resumed_from, "plain": plain,
                   "trained_as": sorted(trained_as),
                   "grad_norms": [r["grad_norm"] for r in records],
                   "generated": alone.tolist()}, open(os.path.join(out, "result.json"), "w"))
        torch.save(model.state_dict(), os.path.join(out, "weights.pt"))
    end_launch(0)
""")


def launch(tmp_path: Path, name: str, nproc: int, micro: int, crash_at: int = 0,
           precision: str = "no", config: str = "fsdp.yaml") -> dict | None:
    out = tmp_path / name
    out.mkdir(exist_ok=True)
    script = tmp_path / "fsdp_script.py"
    script.write_text(SCRIPT)
    env = {"PYTHONPATH": str(ROOT), **(launch_env(config, nproc) if nproc > 1 else {})}
    run_processes([str(script), str(out), str(crash_at), str(micro), precision], nproc,
                  env=env, timeout=240)
    result = out / "result.json"
    return {"dir": out, **json.loads(result.read_text())} if result.exists() else None


def assert_same_training(a: dict, b: dict, atol: float) -> None:
    assert b["losses"] == pytest.approx(a["losses"], abs=atol)
    w1, w2 = torch.load(a["dir"] / "weights.pt"), torch.load(b["dir"] / "weights.pt")
    assert set(w1) == set(w2)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=atol)


def test_fsdp_trains_like_one_process_and_resumes_across_launches(tmp_path):
    one = launch(tmp_path, "one", nproc=1, micro=4)  # 1 process x 4 x 2 accumulation
    two = launch(tmp_path, "fsdp", nproc=2, micro=2)  # 2 sharded processes x 2 x 2
    assert (one["kind"], two["kind"]) == ("NO", "FSDP") and two["world_size"] == 2
    assert len(one["losses"]) == 6 and one["losses"][-1] < one["losses"][0] - 0.3
    assert_same_training(one, two, atol=1e-5)
    # clipping at 0.5 acts (norms above it) and sees the same gradients
    assert max(one["grad_norms"]) > 0.5
    assert two["grad_norms"] == pytest.approx(one["grad_norms"], abs=1e-4)
    assert two["plain"] and two["generated"] == one["generated"]
    assert (one["trained_as"], two["trained_as"]) == (["Parameter"], ["DTensor"])  # sharded

    # killed on step 3 of one process (after the step-2 checkpoint), resumed under FSDP
    assert launch(tmp_path, "cross", nproc=1, micro=4, crash_at=5) is None
    cross = launch(tmp_path, "cross", nproc=2, micro=2)
    assert cross["resumed_from"] == 2 and cross["kind"] == "FSDP"
    assert_same_training(one, cross, atol=1e-5)

    # killed on step 5 under FSDP (after the step-4 checkpoint), resumed under FSDP
    assert launch(tmp_path, "again", nproc=2, micro=2, crash_at=9) is None
    again = launch(tmp_path, "again", nproc=2, micro=2)
    assert again["resumed_from"] == 4
    assert_same_training(two, again, atol=1e-6)


def test_fsdp_in_bf16_trains_like_one_process_in_bf16(tmp_path):
    """bf16 under FSDP2: the sharded copy computes in bf16 from fp32 master weights (accelerate's
    MixedPrecisionPolicy) where one process autocasts, so the curves agree to bf16 rounding."""
    one = launch(tmp_path, "one", nproc=1, micro=4, precision="bf16")
    two = launch(tmp_path, "fsdp", nproc=2, micro=2, precision="bf16")
    assert two["kind"] == "FSDP" and two["trained_as"] == ["DTensor"]
    assert two["losses"] == pytest.approx(one["losses"], abs=2e-2)
    assert one["losses"][-1] < one["losses"][0] - 0.3 and two["plain"]


def test_deepspeed_zero3_trains_like_one_process_and_resumes(tmp_path):
    """ZeRO-3 with the loop driving the engine: micro-batches of 2, two per step, the partial
    last step of each epoch included; clipping by the engine at max_grad_norm."""
    need_deepspeed()
    ds = "deepspeed-zero3.yaml"
    one = launch(tmp_path, "one", nproc=1, micro=4)
    two = launch(tmp_path, "ds", nproc=2, micro=2, config=ds)
    assert two["kind"] == "DEEPSPEED" and two["world_size"] == 2
    # the engine partitioned the copy's weights (it keeps a gathered one between uses at times)
    assert "partitioned" in two["trained_as"]
    assert_same_training(one, two, atol=1e-5)
    assert two["grad_norms"] == pytest.approx(one["grad_norms"], abs=1e-4)
    assert two["plain"] and two["generated"] == one["generated"]

    # killed on step 5 (after the step-4 checkpoint), resumed from the engine's state
    assert launch(tmp_path, "again", nproc=2, micro=2, crash_at=9, config=ds) is None
    again = launch(tmp_path, "again", nproc=2, micro=2, config=ds)
    assert again["resumed_from"] == 4
    assert_same_training(two, again, atol=1e-6)
