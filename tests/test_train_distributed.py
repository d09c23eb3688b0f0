"""Two processes (torchrun, gloo on CPU) train exactly like one: same global batch, same losses.

The script trains a tiny language model with ``lm_loss`` (torch only: importing transformers
costs each process ~5 s; test_train_loop.py runs a real Llama) on 17 sequences, global batch 8:
steps of 8, 8 and 1 examples per epoch. With 2 processes and micro-batch 2 a full step is 2
micro-batches per process, and the partial step of 1 leaves rank 1 nothing, so it runs a
zero-weight dummy micro-batch to join the all-reduce. Only rank 0 may write checkpoints.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import TOY_SEQUENCES, needs_torchrun, run_processes

from w2s.cache import Cache

pytestmark = needs_torchrun

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    import w2s.train.checkpoint as checkpoint
    from w2s.train import TrainConfig, lm_loss, make_accelerator, train

    out = sys.argv[1]
    rank = int(os.environ.get("RANK", "0"))

    # record which process writes checkpoints
    save = checkpoint.save_checkpoint
    def recording_save(*args, **kwargs):
        with open(os.path.join(out, f"saved-by-rank{rank}"), "a") as f:
            f.write("x")
        return save(*args, **kwargs)
    checkpoint.save_checkpoint = recording_save

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(64, 32), torch.nn.Linear(32, 32),
                                torch.nn.Tanh(), torch.nn.Linear(32, 64))  # a bigram model
""") + TOY_SEQUENCES + textwrap.dedent("""
    def collate(items):
        ids = torch.stack(items)
        mask = torch.zeros_like(ids)
        mask[:, 4:] = 1
        return {"input_ids": ids, "mask": mask}

    def loss_fn(m, batch):
        logits = m(batch["input_ids"])
        losses = lm_loss(logits[:, :-1], batch["input_ids"][:, 1:], batch["mask"][:, 1:])
        return {"loss": losses, "first_token": batch["input_ids"][:, 0].float()}

    config = TrainConfig(lr=1e-2, epochs=2, batch_size=8, micro_batch_size=int(sys.argv[2]),
                         checkpoint_every=2, warmup_ratio=0.2)
    accelerator = make_accelerator(config)
    records = []
    result = train(model, seqs, loss_fn=loss_fn, collate=collate, config=config,
                   checkpoint_dir=os.path.join(out, "ckpt"), progress=False,
                   accelerator=accelerator, log=records.append)
    assert rank == 0 or not records  # log() is called on the main process only
    assert not isinstance(model, torch.nn.parallel.DistributedDataParallel)
    if rank == 0:
        json.dump({"losses": result.losses, "world_size": result.world_size,
                   "grad_accum": result.grad_accum, "examples_seen": result.examples_seen,
                   "first_token": [r["first_token"] for r in records]},
                  open(os.path.join(out, "result.json"), "w"))
        torch.save(model.state_dict(), os.path.join(out, "weights.pt"))
""")


def launch(tmp_path: Path, name: str, nproc: int, micro: int) -> dict:
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    run_processes([str(script), str(out), str(micro)], nproc, timeout=180)
    return {"dir": out, **json.loads((out / "result.json").read_text())}


def test_two_processes_train_like_one(tmp_path):
    one = launch(tmp_path, "one", nproc=1, micro=4)  # 1 process x 4 x 2 accumulation
    two = launch(tmp_path, "two", nproc=2, micro=2)  # 2 processes x 2 x 2 accumulation

    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["grad_accum"] == two["grad_accum"] == 2
    assert one["examples_seen"] == two["examples_seen"] == 34
    assert len(one["losses"]) == len(two["losses"]) == 6
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert two["first_token"] == pytest.approx(one["first_token"], abs=1e-4)
    w1 = torch.load(one["dir"] / "weights.pt")
    w2 = torch.load(two["dir"] / "weights.pt")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-5)

    saved = sorted(p.name for p in two["dir"].iterdir() if p.name.startswith("saved-by"))
    assert saved == ["saved-by-rank0"]  # steps 2, 4, 6
    assert (two["dir"] / "saved-by-rank0").read_text() == "xxx"
    assert sorted(p.name for p in (two["dir"] / "ckpt").iterdir()) == ["latest",
                                                                      "step-00000006-done"]


STAGE_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import torch.distributed as dist
    from w2s.cache import Cache, cached_stage

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    cache = Cache(sys.argv[1])
    for k in range(3):
        if rank == 1:
            time.sleep(1.0)  # rank 0 publishes before rank 1 even looks
        with cached_stage(cache, "stage", k=k) as st:
            if not st.done:
                st.publish(lambda folder: (folder / "out.txt").write_text(str(k)))
        assert (st.path / "out.txt").read_text() == str(k)
    dist.barrier()
    dist.destroy_process_group()
""")


def test_the_ranks_of_a_launch_build_a_stage_together(tmp_path):
    """Rank 0 decides whether a stage is built: a rank that looks after rank 0 published must
    still take part (publish has a barrier), not skip the stage and deadlock the launch."""
    script = tmp_path / "stage_script.py"
    script.write_text(STAGE_SCRIPT)
    run_processes([str(script), str(tmp_path / "cache")], 2, timeout=120)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith("stage"))\
        == sorted(Cache(tmp_path / "cache").key("stage", k=k) for k in range(3))
