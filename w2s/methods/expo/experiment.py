"""The stages of ``w2s expo`` (see :mod:`w2s.methods.expo` for the method).

:func:`run`: the pair and its checks (one line, before a run directory exists), then in one run
directory: every alpha's answers to the held-out prompts (alpha 0 = the aligned model; each a
cached stage keyed by the pair's identity, alpha, prompts and sampling), the judge's verdicts
of each alpha against alpha 0, the best alpha, its model (``<run>/model``) and the curve::

    generations/alpha-<a>.jsonl     every candidate's answers (alpha 0: the aligned model)
    judgments-alpha-<a>.jsonl       the judge's verdict on each pair, alpha a vs alpha 0
    expo.png                        gold reward and win rate against alpha (matplotlib extra)
    model/                          the best alpha's model (--save-best)
    metrics.json                    per-alpha rows, best_alpha, win_rate (headline)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import w2s.tiny  # noqa: F401  (registers the builder of tiny:...+<stage> model names)
from w2s.errors import W2SError
from w2s.methods.expo import SPEC
from w2s.methods.expo.config import ExpoConfig, config_summary, sampling, validate
from w2s.methods.expo.extrapolate import (
    TensorFiles,
    check_adapter_pair,
    check_full_pair,
    extrapolate_adapters_into,
    extrapolate_into,
)
from w2s.methods.expo.pair import Pair, resolve_pair
from w2s.models.loading import release_memory
from w2s.runs import Cache, cached_stage, content_hash, file_hash

VERSION = 1
"""Part of every cache key: bump when what a stage computes changes."""


def weights_folder(name: str, cache: Cache, seed: int = 0) -> Path:
    """A folder of safetensors weights for model ``name``: a local folder as it is, a tiny
    model's pretrained folder, a hub model's cached snapshot; anything else (a random tiny
    model, a snapshot without safetensors) is loaded once and written to the cache."""
    from w2s.models import resolve_model

    resolved = resolve_model(name)
    folder: Path | None = None
    if resolved.source == "local":
        folder = Path(resolved.location)
    elif resolved.source == "tiny" and "+" in resolved.location:
        from w2s.models.builders import pretrained_folder

        folder = Path(pretrained_folder(f"tiny:{resolved.location}", needs="w2s.tiny"))
    elif resolved.source in ("alias", "hub"):
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(resolved.location, local_files_only=True))
        except Exception:  # not in the HF cache: the loader below says so in one line
            folder = None
    if folder is not None and any(folder.glob("*.safetensors")):
        return folder
    from w2s.models import load_causal_lm, save_model
    from w2s.models.resolve import model_identity

    # a random tiny model is its seed's: the seed that run loaded it with
    with cached_stage(cache, "expo-weights", "weights", model=model_identity(resolved),
                      seed=seed if resolved.source == "tiny" else None) as st:
        if not st.done:
            model, tok = load_causal_lm(resolved, dtype="fp32", device="cpu", seed=seed)
            st.publish(lambda f: save_model(model, tok, f), meta={"model": name})
            del model
    return st.path


class Candidates:
    """The one model object every alpha is written into, loaded on first use."""

    def __init__(self, pair: Pair, folders: dict[str, Path], cfg: ExpoConfig):
        self.pair, self.folders, self.cfg = pair, folders, cfg
        self.model = self.tokenizer = None
        self.alpha: float | None = None
        if pair.kind == "full":
            self.aligned, self.sft = TensorFiles(folders["aligned"]), TensorFiles(folders["sft"])
            check_full_pair(self.aligned, self.sft)
        else:
            self.base = TensorFiles(folders["base"])
            self.aligned, self.sft = TensorFiles(pair.aligned), TensorFiles(pair.sft)
            check_adapter_pair(self.base, self.aligned, self.sft)

    def identity(self) -> dict[str, Any]:
        """What names the pair's weights, for the cache keys."""
        def files(path: Path) -> list:
            paths = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
            # size and mtime pin the weights (hashing 15 GB per run would cost minutes);
            # adapter files are small: hashed
            return [[p.name, file_hash(p)] if p.stat().st_size < 2**28 else
                    [p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in paths]

        if self.pair.kind == "full":
            return {"aligned": files(self.folders["aligned"]), "sft": files(self.folders["sft"])}
        return {"base": files(self.folders["base"]), "aligned": files(Path(self.pair.aligned)),
                "sft": files(Path(self.pair.sft)), "scale": self.pair.scale}

    def at(self, alpha: float):
        """``(model, tokenizer)`` holding theta(alpha), written in place."""
        from w2s.models import load_causal_lm

        if self.model is None:
            source = self.folders["aligned" if self.pair.kind == "full" else "base"]
            self.model, self.tokenizer = load_causal_lm(str(source), dtype=self.cfg.dtype,
                                                        device=self.cfg.device,
                                                        seed=self.cfg.seed)
        if self.alpha != alpha:
            if self.pair.kind == "full":
                extrapolate_into(self.model, self.aligned, self.sft, alpha)
            else:
                extrapolate_adapters_into(self.model, self.base, self.aligned, self.sft,
                                          self.pair.scale, alpha)
            self.alpha = alpha
        return self.model, self.tokenizer


def load_prompts(cfg: ExpoConfig) -> tuple[list[dict], str]:
    """The held-out rows ``{id, prompt}`` (``samples_per_prompt`` per prompt) and the task's
    prompt format."""
    import warnings

    from w2s.data import load_task
    from w2s.data.core import as_prompts, sample_rows

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = load_task(cfg.task, split="test")
    prompts = as_prompts(test).subset(cfg.n_prompts, cfg.seed)
    if not prompts.rows:
        raise W2SError(f"task '{cfg.task}' has no test prompts to answer")
    k = cfg.samples_per_prompt
    rows = sample_rows(prompts.rows, k)
    return rows, test.meta.get("prompt_format", "plain")


def answers(cands: Candidates, alpha: float, rows: list[dict], hh: bool, cfg: ExpoConfig,
            cache: Cache, key: dict) -> tuple[list[dict], bool]:
    """theta(alpha)'s answers to ``rows`` (a cached stage) and whether they came from the
    cache."""
    from w2s.models.generate import generate

    with cached_stage(cache, "expo-generations", f"alpha {alpha:g}", alpha=alpha,
                      **key) as st:
        if st.done:
            return [json.loads(line) for line in
                    (st.path / "generations.jsonl").read_text().splitlines()], True
        model, tok = cands.at(alpha)
        texts = generate(model, tok, [r["prompt"] for r in rows], sampling(cfg),
                         chat=cfg.chat and not hh)
        out = [{"id": r["id"], "prompt": r["prompt"], "alpha": alpha,
                "response": (t.split("\n\nHuman:")[0] if hh else t).strip()}
               for r, t in zip(rows, texts, strict=True)]
        st.publish(lambda f: (f / "generations.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in out)), meta={"stage": f"alpha {alpha:g}"})
        return out, False


def pick_best(rows: list[dict], by: str) -> float:
    """The alpha whose figure (``gold_reward`` or ``win_rate``) is highest; alpha 0 unless an
    extrapolated one beats it strictly; the smaller alpha on a tie."""
    best = rows[0]
    for row in rows[1:]:
        if row[by] is not None and best[by] is not None and row[by] > best[by]:
            best = row
    return best["alpha"]


def plot(rows: list[dict], best: float, path: Path) -> str | None:
    """expo.png: gold reward (left) and win rate against alpha 0 (right) per alpha."""
    from w2s.evaluation.plots import MISSING, pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return MISSING
    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = [r["alpha"] for r in rows]
    if all(r["gold_reward"] is not None for r in rows):
        ax.plot(xs, [r["gold_reward"] for r in rows], "o-", color="C0")
        ax.set_ylabel("gold reward", color="C0")
        ax = ax.twinx()
    ax.plot(xs, [r["win_rate"] for r in rows], "s--", color="C1")
    ax.set_ylabel("win rate vs alpha 0 (%)", color="C1")
    ax.axvline(best, color="grey", lw=0.8)
    fig.axes[0].set_xlabel("alpha")
    fig.axes[0].set_title("ExPO: theta_a + alpha (theta_a - theta_sft)")
    save_figure(fig, path)
    return None


def run(cfg: ExpoConfig) -> dict:
    """Run the alpha sweep in one run directory; returns metrics.json's content."""
    from w2s.evaluation import evaluate_winrate
    from w2s.evaluation.judges import build_judge
    from w2s.models import save_model
    from w2s.runs import Run

    validate(cfg)
    cache = Cache()
    pair = resolve_pair(cfg.aligned, cfg.sft, cfg.from_run)   # bad input: before any run dir
    seed = cfg.seed if pair.seed is None else int(pair.seed)
    folders = ({"aligned": weights_folder(pair.aligned, cache, seed),
                "sft": weights_folder(pair.sft, cache, seed)} if pair.kind == "full"
               else {"base": weights_folder(pair.base, cache, seed)})
    cands = Candidates(pair, folders, cfg)
    rows, prompt_format = load_prompts(cfg)
    hh = prompt_format == "hh"
    key = {"pair": cands.identity(), "prompts": content_hash(rows), "chat": cfg.chat,
           "sampling": sampling(cfg).__dict__, "dtype": cfg.dtype, "version": VERSION}
    alphas = [0.0, *cfg.alphas]
    with Run.start(SPEC.name, cfg, headline=SPEC.headline, run_dir=cfg.run_dir) as run:
        run.log({"stage": "pair", "kind": pair.kind, "source": pair.source,
                 "folders": {k: str(v) for k, v in folders.items()}})
        generated, cached = {}, {}
        for alpha in alphas:
            generated[alpha], cached[alpha] = answers(cands, alpha, rows, hh, cfg, cache, key)
            run.write_rows(f"generations/alpha-{alpha:g}.jsonl", generated[alpha])
            run.log({"stage": f"alpha {alpha:g}", "cached": cached[alpha]})
        run.keep("every alpha's answers (generations/; judge them with `w2s eval winrate`)")
        judge = build_judge(cfg.judge, batch_size=cfg.judge_batch_size, cache=True)
        table = []
        for alpha in alphas:
            wr = evaluate_winrate(generated[alpha], generated[0.0], judge, run=run,
                                  judgments=f"judgments-alpha-{alpha:g}.jsonl",
                                  log={"alpha": alpha})
            lengths = [len(r["response"]) for r in generated[alpha]]
            table.append({"alpha": alpha, "win_rate": wr["win_rate"],
                          "win_rate_se": wr["win_rate_se"], "wins": wr["wins"],
                          "ties": wr["ties"], "losses": wr["losses"],
                          "lc_win_rate": wr["lc_win_rate"],
                          "gold_reward": wr.get("candidate_reward_mean"),
                          "mean_length_chars": sum(lengths) / max(1, len(lengths)),
                          "cached": cached[alpha]})
        by = cfg.select_by
        if by == "auto":
            by = "gold_reward" if table[0]["gold_reward"] is not None else "win_rate"
        if by == "gold_reward" and table[0]["gold_reward"] is None:
            raise W2SError(f"--select-by gold_reward needs a reward judge; {cfg.judge} gives "
                           "none (use --select-by win_rate)")
        best = pick_best(table, by)
        top = max(table[1:], key=lambda r: (r[by], -r["alpha"]))  # the best extrapolated one
        if cfg.save_best and run.main:
            model, tok = cands.at(best)
            save_model(model, tok, run.path / "model")
        note = plot(table, best, run.path / "expo.png")
        gold0 = table[0]["gold_reward"]
        metrics = {
            **config_summary(cfg), "pair": {"kind": pair.kind, "source": pair.source,
                                            "aligned": pair.aligned, "sft": pair.sft,
                                            "base": pair.base, "lora_scale": pair.scale
                                            if pair.kind == "adapter" else None},
            "alphas_table": table, "selected_by": by, "best_alpha": best,
            "best_extrapolated_alpha": top["alpha"],
            "win_rate": top["win_rate"], "win_rate_se": top["win_rate_se"],
            "gold_reward": top["gold_reward"], "baseline_gold_reward": gold0,
            "gold_reward_gain": (top["gold_reward"] - gold0) if gold0 is not None else None,
            "extrapolation_helps": best != 0.0,
            "n_prompts": len({r["prompt"] for r in rows}), "n_pairs": len(rows),
            "judge_identity": judge.identity(), "saved_model": "model" if cfg.save_best
            else None, "plot": None if note else "expo.png", "plot_note": note,
        }
        full = run.finish(metrics)
    del cands
    release_memory()
    return full
