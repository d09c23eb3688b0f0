"""The decoding benchmarks of ``make bench`` (``cbs_overhead_ratio``, ``guide_cache_speedup``,
``proxy_overhead_ratio``); :mod:`benchmarks.run` describes them and writes the results."""

from __future__ import annotations

import time

SEARCH_BASE, SEARCH_GUIDE = "llama-4x256", "llama-2x128"
SEARCH_NEW, SEARCH_CHUNK, SEARCH_REPEATS = 64, 8, 3
SEARCH_PROMPT = "I tried the new camera last week and the"


class _RecordingGuide:
    """A guide that remembers every call, so the same search can be replayed for timing."""

    def __init__(self, guide):
        self.guide, self.calls = guide, []

    def __getattr__(self, name):
        return getattr(self.guide, name)

    def start(self, prompts, rows):
        self.calls.append(("start", list(prompts), list(rows)))
        return self.guide.start(prompts, rows)

    def update(self, texts, finished):
        self.calls.append(("update", list(texts), list(finished)))
        return self.guide.update(texts, finished)

    def select(self, index):
        self.calls.append(("select", list(index)))
        return self.guide.select(index)


def _replay_with_cache(guide, calls, timer) -> tuple[float, list]:
    t0, scores = timer(), []
    for call in calls:
        out = getattr(guide, call[0])(*call[1:])
        if call[0] == "update":
            scores.append(out["score"])
    return timer() - t0, scores


def _replay_without_cache(guide, calls, timer) -> tuple[float, list, int]:
    """Every chunk scores every candidate from scratch: prompt and whole prefix read again."""
    t0, scores, read, prompts, rows = timer(), [], 0, [], []
    for call in calls:
        if call[0] == "start":
            prompts, rows = call[1], call[2]
        elif call[0] == "select":
            rows = [rows[i] for i in call[1]]
        else:
            s = guide.score_texts([prompts[p] for p in rows], call[1], call[2], batch_size=64)
            scores.append(s["score"])
            read += s["tokens_read"]
    return timer() - t0, scores, read


def bench_search(device: str) -> dict:
    """cbs_overhead_ratio and the guides' scoring cost with and without their KV caches."""
    import statistics

    import torch

    from w2s.methods.search.base import HFBase
    from w2s.methods.search.decoders import Compute, cbs
    from w2s.methods.search.guide import Guide
    from w2s.methods.search.text import encode_prompt
    from w2s.models.generate import SamplingConfig as Sampling

    dev, timer, tok, base_model, tuned, untuned = _tiny_trio(device)
    w, k = 4, 4
    sampling = Sampling(temperature=1.0, top_k=0, top_p=1.0)

    class FixedLength(HFBase):  # every sequence exactly SEARCH_NEW tokens, as generate below
        def sample(self, n_tokens, sampling, generator, suppress_eos=False):
            return super().sample(n_tokens, sampling, generator, suppress_eos=True)

    def plain() -> float:
        ids = torch.tensor([encode_prompt(tok, SEARCH_PROMPT, False)] * (w * k), device=dev)
        torch.manual_seed(0)
        t0 = timer()
        with torch.no_grad():
            out = base_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      do_sample=True, temperature=1.0, top_k=None, top_p=1.0,
                                      max_new_tokens=SEARCH_NEW, min_new_tokens=SEARCH_NEW,
                                      pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id)
        seconds = timer() - t0
        assert out.shape[1] - ids.shape[1] == SEARCH_NEW
        return seconds

    def search(w_: int, k_: int, chunk: int | None):
        compute = Compute(timer=timer)
        guide = _RecordingGuide(Guide(tuned, untuned, tok, chat=False))
        cbs(FixedLength(base_model, tok, chat=False), guide, [SEARCH_PROMPT], w=w_, k=k_,
            l=chunk, max_new_tokens=SEARCH_NEW, sampling=sampling,
            generator=torch.Generator(device=dev).manual_seed(0), compute=compute)
        assert compute.base_tokens == w * k * SEARCH_NEW
        return compute, guide.calls

    plain(), search(w, k, SEARCH_CHUNK), search(1, w * k, None)  # warm-up
    plain_s, cbs_s, own_s, guide_s = [], [], [], []
    for _ in range(SEARCH_REPEATS):  # interleaved, so a slow spell hits every variant
        plain_s.append(plain())
        compute, calls = search(w, k, SEARCH_CHUNK)
        cbs_s.append(compute.base_s)
        guide_s.append(compute.guide_s)
        own_s.append(search(1, w * k, None)[0].base_s)
    cached_s, uncached_s = [], []
    for _ in range(SEARCH_REPEATS):
        seconds, cached = _replay_with_cache(Guide(tuned, untuned, tok, chat=False), calls, timer)
        cached_s.append(seconds)
        seconds, uncached, read = _replay_without_cache(Guide(tuned, untuned, tok, chat=False),
                                                        calls, timer)
        uncached_s.append(seconds)
    agree = all(abs(a - b) <= 1e-3 * max(1.0, abs(b))
                for xs, ys in zip(cached, uncached, strict=True)
                for a, b in zip(xs, ys, strict=True))
    med = statistics.median
    return {
        "cbs_overhead_ratio": med(cbs_s) / med(plain_s),
        "guide_cache_speedup": med(uncached_s) / med(cached_s),
        "search": {
            "base": f"tiny:{SEARCH_BASE} (random init)", "guides": f"tiny:{SEARCH_GUIDE} x 2",
            "cbs": {"w": w, "k": k, "l": SEARCH_CHUNK}, "sequences": w * k,
            "new_tokens": SEARCH_NEW, "device": device,
            "clock": "wall (cuda synchronised)" if dev.type == "cuda" else "process CPU time, 1 thread",
            "plain_generate_s": med(plain_s), "cbs_base_s": med(cbs_s),
            "cbs_guide_s": med(guide_s), "own_sampler_one_chunk_s": med(own_s),
            "cbs_overhead_ratio_vs_own_sampler": med(cbs_s) / med(own_s),
            "guide_with_cache_s": med(cached_s), "guide_without_cache_s": med(uncached_s),
            "guide_tokens_read_with_cache": compute.guide_tokens_read,
            "guide_tokens_read_without_cache": read,
            "guide_scores_agree": agree, "repeats": SEARCH_REPEATS,
            "goal": "cbs_overhead_ratio <= 1.25"},
    }


PROXY_REPEATS = 5


def bench_proxy(device: str) -> dict:
    """proxy_overhead_ratio: proxy-tuned decoding over plain sampling of the same tokens."""
    import statistics

    import torch

    from w2s.methods.search.base import HFBase
    from w2s.methods.search.decoders import Compute
    from w2s.methods.search.logits import Term, logit_decode
    from w2s.models.generate import SamplingConfig

    dev, timer, tok, base_model, tuned, untuned = _tiny_trio(device)
    rows = 16
    prompts = [SEARCH_PROMPT] * rows
    sampling = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    terms = [Term("base", base_model, tok, 1.0), Term("tuned", tuned, tok, 1.0),
             Term("untuned", untuned, tok, -1.0)]

    def plain() -> float:
        base = HFBase(base_model, tok, chat=False)
        t0 = timer()
        base.start(prompts, list(range(rows)))
        base.sample(SEARCH_NEW, sampling, torch.Generator(device=dev).manual_seed(0),
                    suppress_eos=True)
        seconds = timer() - t0
        assert base.tokens_sampled == rows * SEARCH_NEW
        return seconds

    def proxy() -> tuple[float, Compute]:
        compute = Compute(timer=timer)
        t0 = timer()
        logit_decode(terms, prompts, max_new_tokens=SEARCH_NEW, sampling=sampling,
                     generator=torch.Generator(device=dev).manual_seed(0), chat=False,
                     compute=compute, suppress_eos=True)
        seconds = timer() - t0
        assert compute.base_tokens == rows * SEARCH_NEW
        return seconds, compute

    plain(), proxy()  # warm-up
    plain_s, proxy_s, floors, base_s, small_s = [], [], [], [], []
    for _ in range(PROXY_REPEATS):  # interleaved, so a slow spell hits both
        plain_s.append(plain())
        seconds, compute = proxy()
        proxy_s.append(seconds)
        base_s.append(compute.base_s)
        small_s.append(compute.guide_s)
        floors.append(1 + compute.guide_s / plain_s[-1])
    med = statistics.median
    params = {name: sum(p.numel() for p in m.parameters())
              for name, m in (("base", base_model), ("tuned", tuned), ("untuned", untuned))}
    return {
        "proxy_overhead_ratio": med(proxy_s) / med(plain_s),
        "proxy_overhead_floor": med(floors),
        "proxy": {
            "base": f"tiny:{SEARCH_BASE} (random init)", "small": f"tiny:{SEARCH_GUIDE} x 2",
            "sequences": rows, "new_tokens": SEARCH_NEW, "device": device,
            "clock": "wall (cuda synchronised)" if dev.type == "cuda" else "process CPU time, 1 thread",
            "plain_sampling_s": med(plain_s), "proxy_s": med(proxy_s),
            "proxy_base_s": med(base_s), "proxy_small_models_s": med(small_s),
            "floor_from_parameters": 1 + (params["tuned"] + params["untuned"]) / params["base"],
            "parameters": params, "repeats": PROXY_REPEATS,
            "goal": "proxy_overhead_ratio close to proxy_overhead_floor"},
    }


def _tiny_trio(device: str):
    """The device, a timer (CUDA-synchronised wall time; this process's CPU time on a CPU,
    blind to other processes), the tiny tokenizer, and the tiny base model with its tuned and
    untuned guides, as every search benchmark uses them."""
    import torch

    from w2s.models.tiny import build_tiny, tiny_tokenizer

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)

    def timer() -> float:
        if cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()

    return (dev, timer, tiny_tokenizer(), build_tiny(SEARCH_BASE, seed=0).to(dev),
            build_tiny(SEARCH_GUIDE, seed=1).to(dev), build_tiny(SEARCH_GUIDE, seed=2).to(dev))
