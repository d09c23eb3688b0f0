"""``make bench``: measure, side by side in one run, and write ``bench-results.json``.

Each benchmark reports absolute figures and a ratio against its baseline measured in the same
run on the same machine, so the ratio (not the absolute time) is what carries across machines.

- ``logprob_memory_ratio``: peak memory of :func:`w2s.models.sequence_logprobs` over the naive
  ``log_softmax(logits.float()).gather(...)``, vocabulary 151,936 (Qwen2), 4 x 512 tokens, bf16
  logits. Goal <= 0.5. On CPU peak memory is the process's peak RSS above the inputs, each variant
  in its own child process so one cannot hide the other's peak; on CUDA it is
  ``torch.cuda.max_memory_allocated`` above the inputs.

- ``cbs_overhead_ratio``: the base model's time inside chunk-level beam search CBS(4, 4, 8)
  (sampling, KV-cache reordering, chunk bookkeeping; the guides' time reported apart) over plainly
  sampling the same 16 sequences of the same length (64 new tokens, end-of-sequence suppressed)
  with transformers ``generate`` and the same model. Goal <= 1.25. Also ``guide_cache_speedup``:
  the guides' scoring time in the same search replayed without their KV caches (every chunk
  re-reads prompt and prefix) over with them. On CPU the times are this process's CPU time
  (``time.process_time``, one thread), which other processes on a shared machine do not inflate;
  on CUDA wall time after synchronising.
- ``proxy_overhead_ratio``: proxy-tuned decoding (the logit-arithmetic engine: the base model
  plus a small tuned and untuned pair, ``log p_base + (log p_tuned - log p_untuned)`` at every
  token) over plain sampling of the same 16 sequences x 64 tokens (EOS suppressed) with the base
  model alone through the same sampler, side by side. Its floor is ``1 +`` the small models'
  share of the cost: ``proxy_overhead_floor`` = 1 + (the small models' time inside the
  proxy-tuned run / the plain sampling time), i.e. the ratio if combining the log-probs cost
  nothing (also from parameter counts, 1 + 2 N_small / N_base, in the details: the floor where
  the forward passes' FLOPs, not per-call overhead, dominate, as on a GPU with large models).
  Same models and clock as ``cbs_overhead_ratio``.
- ``wspo_cached_step_ratio``: the time of one WSPO training step as ``w2s wspo`` runs it (weak
  log-ratios cached, strong reference log-probs precomputed: ONE forward + backward of the policy
  on the chosen responses) over a step that runs all four models every time on the same chosen
  responses (policy forward + backward, then forwards of the reference, the weak aligned and the
  weak reference model). LoRA r 8 (the default mode; the reference is the policy with adapters
  disabled); tiny llama models, strong 4 x 256, weak 2 x 128, 8 responses of 96 tokens after
  32-token prompts. Goal <= 0.6. The three forwards saved cost less than the policy's forward +
  backward, so this ratio stays above 1/2 by construction. ``wspo_step_ratio_vs_official``: the
  same cached step over the official code's step, which runs the four models on the chosen AND
  the unused rejected responses. Full fine-tuning figures are in the details.
- ``dpo_step_ratio_vs_trl``: the time of one DPO optimizer step of :func:`w2s.train.train_dpo`
  (reference log-probs precomputed once, chosen and rejected scored in one forward) over one
  step of TRL's ``DPOTrainer`` with its default reference handling (sigmoid loss, the reference
  model run every step) on the same tiny model (llama 4 x 256), the same 8 pairs per step, the
  same lengths, both in fp32 without activation checkpointing. Goal <= 1.0.
  Also reported against TRL with ``precompute_ref_log_probs=True``. TRL is a benchmark-only
  dependency (``pip install -e .[bench]``); without it the figure is null with a note.

Step times are medians over several steps after warm-up, the variants interleaved so that a
busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.search import bench_proxy, bench_search

VOCAB, BATCH, SEQ = 151_936, 4, 512


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _child_logprob(variant: str, device: str, vocab: int, batch: int, seq: int) -> dict:
    """Run one variant once on fresh inputs; report its peak memory above the inputs."""
    import torch

    from w2s.models import sequence_logprobs

    torch.manual_seed(0)
    dev = torch.device(device)
    logits = torch.empty(batch, seq, vocab, dtype=torch.bfloat16, device=dev)
    flat = logits.view(-1, vocab)
    for i in range(0, flat.shape[0], 32):  # fill in small pieces: no big fp32 temporary
        flat[i:i + 32] = torch.randn(min(32, flat.shape[0] - i), vocab, device=dev)
    labels = torch.randint(0, vocab, (batch, seq), device=dev)
    mask = torch.ones(batch, seq, device=dev)
    mask[:, : seq // 4] = 0  # a prompt that is not scored

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_peak_bytes()
    t0 = time.perf_counter()
    if variant == "naive":
        logp = torch.log_softmax(logits.float(), dim=-1)
        per_token = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1) * mask
        summed = per_token.sum(-1)
    else:
        per_token, summed = sequence_logprobs(logits, labels, mask)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_peak_bytes() - base
    elapsed = time.perf_counter() - t0
    return {"variant": variant, "peak_bytes": int(peak), "seconds": elapsed,
            "summed_first": float(summed[0])}


def _run_child(args: list[str], threads: int | None = None) -> dict:
    threads_env = str(threads) if threads else os.environ.get("OMP_NUM_THREADS", "2")
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", "--child", *args],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": threads_env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_logprob_memory(device: str) -> dict:
    shape = [device, str(VOCAB), str(BATCH), str(SEQ)]
    naive = _run_child(["logprob", "naive", *shape])
    ours = _run_child(["logprob", "w2s", *shape])
    agree = abs(naive["summed_first"] - ours["summed_first"]) <= 1e-2 * max(
        1.0, abs(naive["summed_first"]))
    return {
        "logprob_memory_ratio": ours["peak_bytes"] / max(1, naive["peak_bytes"]),
        "logprob_time_ratio": ours["seconds"] / max(1e-9, naive["seconds"]),
        "logprob": {"shape": [BATCH, SEQ, VOCAB], "dtype": "bfloat16", "device": device,
                    "naive_peak_mib": naive["peak_bytes"] / 2**20,
                    "w2s_peak_mib": ours["peak_bytes"] / 2**20,
                    "naive_seconds": naive["seconds"], "w2s_seconds": ours["seconds"],
                    "results_agree": agree, "goal": "logprob_memory_ratio <= 0.5"},
    }


# --------------------------------------------------------------------------------------------
# WSPO: a cached step against one that runs all four models


WSPO_STRONG, WSPO_WEAK = "tiny:llama-4x256", "tiny:llama-2x128"
STEP_BATCH, PROMPT_LEN, RESPONSE_LEN = 8, 32, 96
WARMUP, STEPS = 2, 6


def _texts(n: int, length: int, seed: int) -> list[str]:
    """``n`` texts of ``length`` letters (one token each under the byte-level tiny tokenizer)."""
    import random

    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghij klmnopqrstuvwxyz") for _ in range(length))
            for _ in range(n)]


def _median_interleaved(steps: dict, n: int, warmup: int) -> dict[str, float]:
    """Run every variant's ``step()`` ``warmup + n`` times, interleaved; median seconds each."""
    import statistics

    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + n):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in times.items()}


def _wspo_step_times(device: str, mode: str) -> dict[str, float]:
    """Median seconds of the three step variants, the strong model trained with ``mode``
    (``lora``: r 8 adapters, the reference is the policy with adapters disabled; ``full``: every
    weight, the reference a frozen copy)."""
    import contextlib

    import torch
    from w2s.methods.wspo_core import wspo_collate, wspo_examples, wspo_loss_fn

    from w2s.models import LoraSettings, load_causal_lm, response_logprobs
    from w2s.train.losses import wspo_loss
    from w2s.train.preference import collate, encode, score_tokens

    dev = torch.device(device)
    lora = LoraSettings(r=8, alpha=16) if mode == "lora" else None
    policy, tok = load_causal_lm(WSPO_STRONG, device=dev, dtype="fp32", seed=0, lora=lora)
    frozen_ref = policy if lora else load_causal_lm(WSPO_STRONG, device=dev, dtype="fp32",
                                                    seed=0)[0]
    weak_ref, _ = load_causal_lm(WSPO_WEAK, device=dev, dtype="fp32", seed=1)
    weak_aligned, _ = load_causal_lm(WSPO_WEAK, device=dev, dtype="fp32", seed=2)
    pad, gamma = tok.pad_token_id, 0.1
    prompts = _texts(STEP_BATCH, PROMPT_LEN, 0)
    chosen = [encode(tok, p, r, chat=False) for p, r in
              zip(prompts, _texts(STEP_BATCH, RESPONSE_LEN - 1, 1), strict=True)]
    rejected = [encode(tok, p, r, chat=False) for p, r in
                zip(prompts, _texts(STEP_BATCH, RESPONSE_LEN - 1, 2), strict=True)]
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6)

    def reference_model():  # the LoRA reference is the base model: adapters off
        return policy.disable_adapter() if lora else contextlib.nullcontext()

    # what `w2s wspo` does: the weak ratios and the reference once, before training
    ratios = [a - b for a, b in zip(score_tokens(weak_aligned, chosen, pad),
                                    score_tokens(weak_ref, chosen, pad), strict=True)]
    reference = score_tokens(frozen_ref, chosen, pad, reference=True)
    policy.train()
    cached_batch = wspo_collate(pad, "token")(wspo_examples(chosen, ratios, reference, "token"))
    cached_batch = {k: v.to(dev) for k, v in cached_batch.items()}
    loss_fn = wspo_loss_fn(gamma, "token")

    def finish(loss):
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def cached_step():
        finish(loss_fn(policy, cached_batch)["loss"].mean())

    def four_models(items):
        batch = {k: v.to(dev) for k, v in collate(items, pad).items()}
        args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        with torch.no_grad(), reference_model():
            ref_lp, _ = response_logprobs(frozen_ref, *args)
        with torch.no_grad():
            weak_al_lp, _ = response_logprobs(weak_aligned, *args)
            weak_ref_lp, _ = response_logprobs(weak_ref, *args)
        lp, _ = response_logprobs(policy, *args)
        b = len(chosen)  # the official code scores rejected rows too, then drops them
        mask = batch["response_mask"][:b, 1:]
        finish(wspo_loss(lp[:b], ref_lp[:b], weak_al_lp[:b], weak_ref_lp[:b], mask,
                         gamma=gamma).mean())

    return _median_interleaved({"cached": cached_step,
                                "four_models": lambda: four_models(chosen),
                                "official_style": lambda: four_models(chosen + rejected)},
                               STEPS, WARMUP)


def bench_wspo_step(device: str) -> dict:
    """``wspo_cached_step_ratio`` with LoRA (the default of ``w2s wspo`` and the authors' main
    recipe); the same with full fine-tuning and against the official-code step as details."""
    lora, full = _wspo_step_times(device, "lora"), _wspo_step_times(device, "full")
    details = {"strong": WSPO_STRONG, "weak": WSPO_WEAK, "device": device, "batch": STEP_BATCH,
               "prompt_tokens": PROMPT_LEN, "response_tokens": RESPONSE_LEN,
               "goal": "wspo_cached_step_ratio <= 0.6"}
    for mode, t in (("lora", lora), ("full", full)):
        details[mode] = {"cached_step_s": t["cached"], "four_model_step_s": t["four_models"],
                         "official_style_step_s": t["official_style"],
                         "ratio": t["cached"] / t["four_models"],
                         "ratio_vs_official_style": t["cached"] / t["official_style"]}
    return {"wspo_cached_step_ratio": details["lora"]["ratio"],
            "wspo_step_ratio_vs_official": details["lora"]["ratio_vs_official_style"],
            "wspo": details}


# --------------------------------------------------------------------------------------------
# DPO: our step against TRL's DPOTrainer step


DPO_MODEL, DPO_PAIRS, DPO_WARMUP, DPO_STEPS = "tiny:llama-4x256", 8, 2, 6


def _dpo_rows(tok, n_steps: int) -> list[dict]:
    from w2s.models import format_chat

    n = DPO_PAIRS * n_steps
    prompts = _texts(n, PROMPT_LEN, 3)
    return [{"prompt": format_chat(tok, p), "chosen": c, "rejected": r} for p, c, r in
            zip(prompts, _texts(n, RESPONSE_LEN - 1, 4), _texts(n, RESPONSE_LEN - 1, 5),
                strict=True)]


def _step_times(stamps: list[float], warmup: int) -> float:
    import statistics

    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return statistics.median(gaps[warmup:])


def _ours_dpo(rows: list[dict], n_steps: int) -> float:
    from w2s.models import load_causal_lm
    from w2s.train import TrainConfig, train_dpo

    model, tok = load_causal_lm(DPO_MODEL, seed=0)
    stamps: list[float] = []
    config = TrainConfig(lr=1e-6, batch_size=DPO_PAIRS, micro_batch_size=DPO_PAIRS,
                         max_steps=n_steps, scheduler="constant", seed=0)
    train_dpo(model, tok, rows, config, beta=0.1, chat=False, max_len=512,
              log=lambda record: stamps.append(time.perf_counter()), progress=False)
    return _step_times(stamps, DPO_WARMUP)


def _trl_dpo(rows: list[dict], n_steps: int, precompute: bool, out: str) -> float:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from w2s.models import load_causal_lm

    model, tok = load_causal_lm(DPO_MODEL, seed=0)
    # TRL's default reference is a second copy of the model, loaded from the model's path; an
    # in-process tiny model has none, so the copy is handed over (the same thing)
    reference, _ = load_causal_lm(DPO_MODEL, seed=0)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    import torch

    args = DPOConfig(output_dir=out, per_device_train_batch_size=DPO_PAIRS, max_steps=n_steps,
                     learning_rate=1e-6, lr_scheduler_type="constant", beta=0.1,
                     loss_type="sigmoid", max_length=512, precompute_ref_log_probs=precompute,
                     report_to="none", save_strategy="no", logging_steps=10_000,
                     use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
                     dataloader_num_workers=0, seed=0,
                     # like ours: fp32, no activation checkpointing (TRL's own defaults are bf16
                     # autocast and gradient checkpointing; the same numerics make the race fair)
                     bf16=False, gradient_checkpointing=False)
    trainer = DPOTrainer(model=model, ref_model=reference, args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[Clock()])
    trainer.train()
    return _step_times(stamps, DPO_WARMUP)


def _child_dpo(variant: str, device: str) -> dict:
    """One DPO variant in its own process (TRL's Trainer sets up accelerate its own way, which
    must not leak into our loop's): its median step seconds."""
    import tempfile

    import torch

    from w2s.models import load_causal_lm

    torch.manual_seed(0)
    _, tok = load_causal_lm(DPO_MODEL, seed=0)
    n_steps = DPO_WARMUP + DPO_STEPS + 1
    rows = _dpo_rows(tok, n_steps)
    if variant == "ours":
        return {"variant": variant, "step_s": _ours_dpo(rows, n_steps)}
    with tempfile.TemporaryDirectory() as out:
        return {"variant": variant,
                "step_s": _trl_dpo(rows, n_steps, precompute=variant == "trl-precomputed",
                                   out=out)}


def bench_dpo_vs_trl(device: str, threads: int) -> dict:
    import importlib.util

    note = {"model": DPO_MODEL, "pairs_per_step": DPO_PAIRS, "prompt_tokens": PROMPT_LEN,
            "response_tokens": RESPONSE_LEN, "goal": "dpo_step_ratio_vs_trl <= 1.0"}
    if importlib.util.find_spec("trl") is None:
        return {"dpo_step_ratio_vs_trl": None,
                "dpo": {**note, "note": "TRL is not installed: pip install -e '.[bench]' (or "
                                        "`make bench`, which does) to measure this ratio"}}
    from importlib import metadata

    run = lambda variant: _run_child(["dpo", variant, device], threads)["step_s"]  # noqa: E731
    # ours before and after TRL: a machine that gets busier or quieter shows up as a spread
    ours, theirs, ours_again, theirs_pre = (run("ours"), run("trl"), run("ours"),
                                            run("trl-precomputed"))
    best = min(ours, ours_again)
    return {"dpo_step_ratio_vs_trl": best / theirs,
            "dpo": {**note, "device": device, "trl": metadata.version("trl"),
                    "ours_step_s": [ours, ours_again], "trl_step_s": theirs,
                    "trl_precomputed_ref_step_s": theirs_pre,
                    "ratio_vs_trl_precomputed_ref": best / theirs_pre}}


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results.json")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--only", choices=["logprob", "search", "proxy", "wspo", "dpo"], default=None,
                        help="run one benchmark (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the step-time "
                        "benchmarks (1: steady timings on a shared machine)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child[0] == "dpo":
            import torch

            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
            print(json.dumps(_child_dpo(args.child[1], args.child[2])))
            return
        kind, variant, device, vocab, batch, seq = args.child
        assert kind == "logprob"
        print(json.dumps(_child_logprob(variant, device, int(vocab), int(batch), int(seq))))
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = {"machine": {**machine(), "step_threads": args.threads},
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.only in (None, "logprob"):
        results.update(bench_logprob_memory(device))
    if args.only in (None, "search"):
        results.update(bench_search(device))
    if args.only in (None, "proxy"):
        results.update(bench_proxy(device))
    torch.set_num_threads(args.threads)
    if args.only in (None, "wspo"):
        results.update(bench_wspo_step(device))
    if args.only in (None, "dpo"):
        results.update(bench_dpo_vs_trl(device, args.threads))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items()
                      if "_ratio" in k or k.endswith(("_speedup", "_floor"))}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
