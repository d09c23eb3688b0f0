"""The stages of ``w2s wspo`` (see :mod:`w2s.methods.wspo` for the method).

:func:`~w2s.methods.wspo.plan.make_plan` resolves everything first, loading no weights (and
computes every stage's cache key); :class:`Pipeline` then runs the stages, one method each, and
:func:`run` calls them in order inside one run directory.

Every stage goes through :func:`w2s.runs.cached_stage` under the key the plan computed: the weak
DPO, the weak log-ratios, the strong reference and the generations before training are cache
entries (a second run with other strong-side settings redoes none of them); the strong WSPO
training has no entry (its model goes to the run directory) but checkpoints to the stage's
``<cache>/inprogress/<key>`` (the key covers everything the training depends on), so rerunning a
killed command resumes it; the checkpoints are removed once the run has finished.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import torch

import w2s.tiny  # noqa: F401  (registers the builder of tiny:...+<stage> model names)
from w2s.errors import W2SError
from w2s.methods.wspo import SPEC
from w2s.methods.wspo.config import WSPOConfig, config_summary, sampling, stage_train_config
from w2s.methods.wspo.plan import (
    VERSION,
    Plan,
    check_same_tokens,
    make_plan,
    render_plan,
    tokens_hash,
)
from w2s.models.loading import release_memory
from w2s.runs import Cache, Stage, cached_stage

# --------------------------------------------------------------------------------------------
# cached per-token values


SEQUENCE_VARIANT = ("sequence level: a w2s extension (length-normalised sequence log-ratios), "
                    "not the paper's token-level loss")
"""metrics.json's ``variant`` (shown by ``w2s report``) of a ``--granularity sequence`` run."""


def scored_count(item) -> int:
    """Response tokens the log-prob helper scores: all of them, except a first token that has no
    context (a response starting at position 0)."""
    return len(item.input_ids) - max(item.start, 1)


def write_token_values(folder: Path, values: list[torch.Tensor], meta: dict) -> None:
    """Per-item 1-D tensors -> ``values.safetensors`` (flat values + lengths) + ``meta.json``."""
    from safetensors.torch import save_file

    flat = torch.cat(values) if values else torch.zeros(0)
    lengths = torch.tensor([len(v) for v in values], dtype=torch.int64)
    save_file({"values": flat.float().contiguous(), "lengths": lengths},
              str(folder / "values.safetensors"))
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def read_token_values(folder: Path, meta: dict, items) -> list[torch.Tensor]:
    """The values :func:`write_token_values` stored, checked against what they must be: the
    same ``meta`` (models, tokens) and one value per scored token of every item."""
    from safetensors.torch import load_file

    try:
        stored_meta = json.loads((folder / "meta.json").read_text())
        tensors = load_file(str(folder / "values.safetensors"))
        flat, lengths = tensors["values"], tensors["lengths"].tolist()
    except Exception as e:  # any unreadable entry: say which and how to fix it
        raise W2SError(f"cache entry {folder} is unreadable ({type(e).__name__}: {e}); delete it "
                       "and rerun to recompute it") from None
    if stored_meta != json.loads(json.dumps(meta, sort_keys=True)):
        diff = sorted(k for k in set(meta) | set(stored_meta) if stored_meta.get(k) != meta.get(k))
        raise W2SError(f"cache entry {folder} was made from other inputs ({', '.join(diff)} "
                       "differ): it does not belong to these models or data; delete it and "
                       "rerun to recompute it")
    expected = [scored_count(e) for e in items]
    if lengths != expected or flat.numel() != sum(expected):
        raise W2SError(f"cache entry {folder} holds {len(lengths)} rows that do not match the "
                       f"{len(items)} encoded examples; delete it and rerun to recompute it")
    return list(torch.split(flat, lengths))


# --------------------------------------------------------------------------------------------
# the pipeline


class Pipeline:
    """One ``w2s wspo`` run: the stages in order, sharing the cache, accelerator and run record."""

    def __init__(self, plan: Plan):
        from w2s.train import make_accelerator

        self.plan = plan
        self.cfg = plan.cfg
        self.cache = Cache()
        self.run = None  # the Run record, set once the run directory exists
        self.accelerator = make_accelerator(stage_train_config(self.cfg.strong_train,
                                                               self.cfg.seed))
        self.device = self.accelerator.device
        self.main = self.accelerator.is_main_process
        self.stages: dict[str, dict] = {}
        self.weak_summary: dict[str, Any] = {}
        self.last_step: dict[str, Any] = {}
        self.training: Stage | None = None  # the WSPO stage, whose checkpoints clean_up removes

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log(record)

    def _stage(self, stage: str):
        """``with self._stage("weak_ratios") as st``: the stage through
        :func:`~w2s.runs.cached_stage`, under the key the plan computed (and the dry run
        showed), its work counted as the compute stage of the same name."""
        kind, parts = self.plan.inputs[stage]
        return cached_stage(self.cache, kind, stage, **parts)

    def _record(self, stage: str, cached: bool, **extra: Any) -> None:
        self.stages[stage] = {"cached": cached, "key": self.plan.keys.get(stage), **extra}
        self.log({"stage": stage, "cached": cached, "cache_key": self.plan.keys.get(stage),
                  **extra})

    def _load(self, source, lora=None):
        from w2s.models import load_causal_lm

        return load_causal_lm(source, dtype=self.plan.dtype, device=self.device, lora=lora,
                              seed=self.cfg.seed)

    def _score(self, source, items, pad: int) -> list[torch.Tensor]:
        """Per-token log-probs of ``items`` under the model at ``source``, loaded for this only
        (and released before returning)."""
        from w2s.train.preference import score_tokens

        model, _ = self._load(source)
        values = score_tokens(model, items, pad, batch_size=self.cfg.score_batch_size)
        del model
        release_memory()
        return values

    # ---- 1. the weak aligned model -------------------------------------------------------------
    def align_weak(self):
        """pi_w_r: ``--weak-aligned`` as given, else the weak model after DPO on the training
        pairs (cached as a merged save_pretrained folder)."""
        from w2s.models import resolve_model, save_model
        from w2s.train import train_dpo

        plan, cfg = self.plan, self.cfg
        if plan.weak_aligned is not None:
            self.stages["weak_dpo"] = {"cached": None, "skipped": "--weak-aligned given"}
            return plan.weak_aligned
        with self._stage("weak_dpo") as st:
            if st.done:
                self._record("weak_dpo", True)
            else:
                model, tok = self._load(plan.weak, lora=_lora(cfg))
                result = train_dpo(model, tok, plan.train.rows,
                                   stage_train_config(cfg.weak_dpo, cfg.seed), beta=cfg.beta,
                                   ref_batch_size=cfg.score_batch_size,
                                   checkpoint_dir=st.progress, accelerator=self.accelerator,
                                   description="weak DPO",
                                   log=lambda rec: self.log({"stage": "weak DPO", **rec}),
                                   **plan.encode_options)

                def write(folder: Path) -> None:
                    save_model(model, tok, folder)
                    (folder / "train.json").write_text(json.dumps(result.to_dict(), indent=1)
                                                       + "\n")

                st.publish(write, meta={"model": cfg.weak, "stage": "weak DPO"})
                self._record("weak_dpo", False, steps=result.steps,
                             final_loss=result.final_loss, resumed_from=result.resumed_from)
                del model, write
                release_memory()
        return resolve_model(str(st.path))

    # ---- 2. the weak log-ratios ----------------------------------------------------------------
    def weak_log_ratios(self, aligned) -> list[torch.Tensor]:
        """Per-token ``log pi_w_r - log pi_w_ref`` of every training response (weak tokens),
        computed once: two weak forwards per response, then cached."""
        from w2s.models import load_tokenizer
        from w2s.train.preference import encode

        plan, cfg = self.plan, self.cfg
        meta = {"what": "weak log-ratios", "weak": plan.identities["weak"],
                "weak_aligned": (plan.identities["weak_aligned"] or
                                 {"weak_dpo": plan.keys["weak_dpo"]}),
                "tokens": tokens_hash(plan.weak_items), "dtype": plan.dtype, "version": VERSION}
        with self._stage("weak_ratios") as st:
            if st.done:
                ratios = read_token_values(st.path, meta, plan.weak_items)
                self._record("weak_ratios", True)
            else:
                aligned_tok = load_tokenizer(aligned)
                rows = plan.train.rows
                again = [encode(aligned_tok, r["prompt"], r["chosen"], **plan.encode_options)
                         for r in rows]
                check_same_tokens(plan.weak_items, again, rows, cfg.weak,
                                  cfg.weak_aligned or "the DPO-aligned weak model",
                                  what="the weak log-ratio")
                before = self._score(plan.weak, plan.weak_items, plan.pad["weak"])
                after = self._score(aligned, plan.weak_items, plan.pad["weak"])
                ratios = [a - b for a, b in zip(after, before, strict=True)]
                st.publish(lambda folder: write_token_values(folder, ratios, meta),
                           meta={"stage": "weak log-ratios"})
                self._record("weak_ratios", False, n=len(ratios))
        per_example = torch.stack([r.mean() for r in ratios])
        self.weak_summary = {"mean_log_ratio_per_token": float(per_example.mean()),
                             "positive_fraction": float((per_example > 0).float().mean())}
        self.log({"stage": "weak_ratios", **self.weak_summary})
        return ratios

    # ---- 3. the strong model and its reference -------------------------------------------------
    def load_strong(self):
        """The strong model to train: LoRA adapters on it, or all its weights."""
        return self._load(self.plan.strong, lora=_lora(self.cfg))

    def strong_reference(self, model) -> list[torch.Tensor]:
        """Per-token ``log pi_ref`` of every training response under the strong model before any
        training (adapters disabled under LoRA); computed once, cached."""
        from w2s.train.preference import score_tokens

        plan = self.plan
        meta = {"what": "strong reference log-probs", "strong": plan.identities["strong"],
                "tokens": tokens_hash(plan.strong_items), "dtype": plan.dtype,
                "version": VERSION}
        with self._stage("strong_reference") as st:
            if st.done:
                self._record("strong_reference", True)
                return read_token_values(st.path, meta, plan.strong_items)
            values = score_tokens(model, plan.strong_items, plan.pad["strong"],
                                  batch_size=self.cfg.score_batch_size, reference=True)
            st.publish(lambda folder: write_token_values(folder, values, meta),
                       meta={"stage": "strong reference"})
            self._record("strong_reference", False, n=len(values))
            return values

    # ---- 4 and 6. generations ------------------------------------------------------------------
    def generate(self, model, tokenizer, when: str) -> list[dict]:
        """``{id, prompt, response}`` of the strong model on the held-out prompts, written to the
        run; ``when`` is ``before`` (cached) or ``after`` training."""
        if when == "before":
            rows = self._before(model, tokenizer)
        else:
            rows = self._sample(model, tokenizer, str(self.run.path / "model")
                                if self.run is not None else None)
        if self.run is not None:
            name = "generations.jsonl" if when == "after" else "generations_before.jsonl"
            self.run.write_rows(name, rows)
        return rows

    def _before(self, model, tokenizer) -> list[dict]:
        """The generations before training: sampled once, then read from the cache (checked to
        answer these prompts)."""
        plan = self.plan
        with self._stage("before") as st:
            if st.done:
                rows = [json.loads(line) for line in (st.path / "generations.jsonl").read_text()
                        .splitlines()]
                if [r["id"] for r in rows] != [r["id"] for r in plan.eval_rows]:
                    raise W2SError(f"cache entry {st.path} holds generations for other prompts; "
                                   "delete it and rerun")
                self._record("before", True)
                return rows
            rows = self._sample(model, tokenizer, plan.strong.location)
            st.publish(lambda folder: (folder / "generations.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows)),
                meta={"stage": "generations before training"})
            self._record("before", False, n=len(rows))
            return rows

    def _sample(self, model, tokenizer, location: str | None) -> list[dict]:
        """One answer per evaluation row (``location``: where the vllm backend loads it from)."""
        from w2s.models.generate import generate

        plan, cfg = self.plan, self.cfg
        hh = plan.prompt_format == "hh"
        texts = generate(model, tokenizer, [r["prompt"] for r in plan.eval_rows], sampling(cfg),
                         chat=cfg.chat and not hh, backend=self.backend, model_name=location)
        return [{"id": r["id"], "prompt": r["prompt"], "response": _clean(t, hh)}
                for r, t in zip(plan.eval_rows, texts, strict=True)]

    # ---- 5. WSPO -------------------------------------------------------------------------------
    def train_strong(self, model, weak_ratios: list[torch.Tensor],
                     reference: list[torch.Tensor]):
        """Train the strong model with :func:`w2s.train.losses.wspo_loss`; returns the loop's
        :class:`~w2s.train.TrainResult`. The stage has no cache entry (the model goes to the
        run); it checkpoints to the stage's progress folder, so a killed run resumes there, and
        :meth:`clean_up` removes the checkpoints once the run has finished."""
        from w2s.train import train

        plan, cfg = self.plan, self.cfg
        examples = wspo_examples(plan.strong_items, weak_ratios, reference, cfg.granularity)

        def log(record: dict) -> None:
            self.last_step = record
            self.log({"stage": "wspo", **record})

        with self._stage("strong_train") as st:
            self.training = st
            result = train(model, examples, loss_fn=wspo_loss_fn(cfg.gamma, cfg.granularity),
                           collate=wspo_collate(plan.pad["strong"], cfg.granularity),
                           config=stage_train_config(cfg.strong_train, cfg.seed),
                           checkpoint_dir=st.progress, accelerator=self.accelerator,
                           description="wspo", log=log)
        self.log({"stage": "wspo trained", "steps": result.steps,
                  "resumed_from": result.resumed_from, "final_loss": result.final_loss})
        return result

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, after: list[dict], before: list[dict], trained) -> dict[str, Any]:
        """metrics.json: win rate of the trained strong model against itself before training,
        the gold reward of both (reward judges), the weak signal and the training record."""
        from w2s.evaluation import evaluate_winrate

        cfg = self.cfg
        wr = evaluate_winrate(after, before, cfg.judge, run=self.run, cache=True,
                              batch_size=cfg.score_batch_size)
        gold_after, gold_before = wr.get("candidate_reward_mean"), wr.get("baseline_reward_mean")
        record = {k: v for k, v in trained.to_dict().items() if k != "losses"}
        record["first_loss"] = trained.losses[0] if trained.losses else None
        last = self.last_step  # the last logged step (none when training had finished before)
        record["strong_log_ratio"] = last.get("strong_log_ratio")
        record["target_log_ratio"] = last.get("target_log_ratio")
        return {
            **config_summary(cfg),
            # the sequence-level loss is w2s's extension: its figures are not the paper's
            "variant": None if cfg.granularity == "token" else SEQUENCE_VARIANT,
            "win_rate": wr["win_rate"], "win_rate_se": wr["win_rate_se"],
            "lc_win_rate": wr["lc_win_rate"], "wins": wr["wins"], "ties": wr["ties"],
            "losses": wr["losses"], "n_pairs": wr["n"],
            "n_prompts": len({r["prompt"] for r in self.plan.eval_rows}),
            "gold_reward_mean": gold_after, "gold_reward_mean_before": gold_before,
            "gold_reward": gold_after, "baseline_gold_reward": gold_before,
            "gold_reward_gain": (gold_after - gold_before) if gold_after is not None else None,
            "before": _gen_summary(before, gold_before),
            "after": _gen_summary(after, gold_after),
            "judge_identity": wr["judge"],
            "generation": {"backend": self.backend, "requested_backend": cfg.backend,
                           **dataclasses.asdict(sampling(cfg))},
            "weak_signal": self.weak_summary,
            "n_train": len(self.plan.train),
            "training": record,
            "stages": self.stages,
        }

    @property
    def backend(self) -> str:
        """The generation backend that will run: ``vllm`` only where it can (else a warning
        says why and ``hf`` runs), see :func:`w2s.models.generate.pick_backend`."""
        if not hasattr(self, "_backend"):
            from w2s.models.generate import pick_backend

            self._backend = pick_backend(self.cfg.backend)
            if self._backend == "vllm" and self.plan.strong.source == "tiny":
                warnings.warn("vllm cannot load in-process tiny models; generating with hf",
                              stacklevel=2)
                self._backend = "hf"
        return self._backend

    def save(self, model, tokenizer, force: bool = False):
        """``<run>/model``: the trained strong model, LoRA merged (``--save-model``, or
        ``force`` for the vllm backend, which loads it from there). Returns the model to use
        afterwards (merging LoRA replaces the peft wrapper)."""
        from w2s.models import save_model

        if (self.cfg.save_model or force) and self.run is not None:
            if self.main:
                model = save_model(model, tokenizer, self.run.path / "model")
            self.accelerator.wait_for_everyone()
        return model

    def clean_up(self) -> None:
        """Remove the finished training's checkpoints (the run holds what it produced)."""
        if self.training is not None:
            self.training.clear_progress()


def _lora(cfg: WSPOConfig):
    from w2s.models import LoraSettings

    return LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha) if cfg.mode == "lora" else None



def _clean(text: str, hh: bool) -> str:
    """A generated reply: an HH continuation is cut where the model starts the next turn."""
    if hh:
        text = text.split("\n\nHuman:")[0]
    return text.strip()


def _gen_summary(rows: list[dict], gold: float | None) -> dict[str, Any]:
    lengths = [len(r["response"]) for r in rows]
    return {"gold_reward_mean": gold, "mean_length_chars": sum(lengths) / max(1, len(lengths)),
            "empty": sum(1 for r in rows if not r["response"].strip())}


# --------------------------------------------------------------------------------------------
# the WSPO step


def wspo_examples(items, weak_ratios, reference, granularity: str) -> list[dict]:
    """Training examples: the encoded (prompt, chosen response) with its precomputed weak
    log-ratio and strong reference log-probs (per token, or length-normalised per sequence)."""
    out = []
    for item, weak, ref in zip(items, weak_ratios, reference, strict=True):
        if granularity == "token":
            if len(weak) != len(ref):
                raise W2SError("token level: weak and strong score different numbers of tokens; "
                               "use --granularity sequence")
            out.append({"item": item, "weak": weak, "ref": ref})
        else:  # each model normalises by its own token count
            out.append({"item": item, "weak": float(weak.mean()) if len(weak) else 0.0,
                        "ref": float(ref.mean()) if len(ref) else 0.0})
    return out


def wspo_collate(pad_id: int, granularity: str):
    """examples -> a batch of the chosen responses only, with ``weak`` and ``ref`` laid out like
    the policy's per-token log-probs ([B, T-1], token level) or as [B] (sequence level)."""
    from w2s.train.preference import collate, token_values

    def fn(examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate([e["item"] for e in examples], pad_id)
        if granularity == "token":
            batch["weak"] = token_values(batch["response_mask"], [e["weak"] for e in examples])
            batch["ref"] = token_values(batch["response_mask"], [e["ref"] for e in examples])
        else:
            batch["weak"] = torch.tensor([e["weak"] for e in examples], dtype=torch.float32)
            batch["ref"] = torch.tensor([e["ref"] for e in examples], dtype=torch.float32)
        return batch

    return fn


def wspo_loss_fn(gamma: float, granularity: str):
    """``loss_fn(model, batch)`` for the training loop: ONE forward of the policy over the
    chosen responses; the weak log-ratio and the reference come precomputed in the batch.

    Logged besides the loss (per-example means over response tokens): ``strong_log_ratio``,
    ``log pi_theta - log pi_ref``, and ``target_log_ratio``, the weak log-ratio / gamma it is
    driven to.
    """
    from w2s.models.logprobs import response_logprobs
    from w2s.train.losses import wspo_loss

    def fn(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        per_token, summed = response_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                              batch["response_mask"])
        mask = batch["response_mask"][:, 1:].to(per_token.dtype)
        n = mask.sum(-1).clamp_min(1)
        weak, ref = batch["weak"], batch["ref"]
        if granularity == "token":
            losses = wspo_loss(per_token, ref, weak, torch.zeros_like(weak), mask, gamma=gamma)
            strong_ratio = ((per_token - ref) * mask).sum(-1) / n
            weak_ratio = (weak * mask).sum(-1) / n
        else:
            policy = summed / n
            losses = wspo_loss(policy, ref, weak, torch.zeros_like(weak), None, gamma=gamma)
            strong_ratio, weak_ratio = policy - ref, weak
        return {"loss": losses, "strong_log_ratio": strong_ratio.detach(),
                "target_log_ratio": (weak_ratio / gamma).detach()}

    return fn


# --------------------------------------------------------------------------------------------
# the run


def run(cfg: WSPOConfig) -> dict:
    """Run the WSPO experiment in one run directory; returns metrics.json's content.

    With ``dry_run``: print the plan and return it (nothing is loaded or written).
    """

    from w2s.runs import Run

    plan = make_plan(cfg, dry=cfg.dry_run)  # bad input fails here, before any directory exists
    if cfg.dry_run:
        print(render_plan(plan))
        return plan.summary()
    pipe = Pipeline(plan)
    with Run.start(SPEC.name, cfg, headline=SPEC.headline, run_dir=cfg.run_dir, env_extra=plan.environment()) as run:
        pipe.run = run
        for note in plan.notes:
            run.log({"event": "note", "note": note})
        weak_aligned = pipe.align_weak()                     # 1. DPO of the weak model (cached)
        weak_ratios = pipe.weak_log_ratios(weak_aligned)     # 2. once per data set (cached)
        strong, tokenizer = pipe.load_strong()
        reference = pipe.strong_reference(strong)            # 3. log pi_ref, once (cached)
        before = pipe.generate(strong, tokenizer, "before")  # 4. held-out answers (cached)
        trained = pipe.train_strong(strong, weak_ratios, reference)  # 5. WSPO
        if pipe.backend == "vllm":                           # vLLM reads models from disk
            strong = pipe.save(strong, tokenizer, force=True)
        after = pipe.generate(strong, tokenizer, "after")    # 6. answers after training
        run.keep("the answers before and after training (generations*.jsonl; judge them "
                 "with `w2s eval winrate`)")                 # a failing judge loses nothing
        metrics = pipe.evaluate(after, before, trained)
        if pipe.backend != "vllm":
            pipe.save(strong, tokenizer)
        full = run.finish(metrics)
    pipe.clean_up()
    return full
