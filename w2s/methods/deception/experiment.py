"""The steps of ``w2s deception`` (see :mod:`w2s.methods.deception` for the method).

:class:`Experiment` holds what every step shares (config, plan, cache, accelerator, run record)
and has one method per step: ``load_data`` (test pairs, halves A and B, helpfulness pairs),
``run_chain`` (ceilings -> weak labels -> [intermediate] -> strong under each conflict -> scores)
and ``fit`` (train one model with one objective and predict: a :func:`~w2s.runs.cached_stage`,
keyed by content hash). The loss of every objective, with the explicit-conflict term, is
:func:`objective_losses`, a pure function. :func:`run` calls the steps in one run directory and
:func:`~w2s.methods.deception.summary.summarize` turns their results into metrics.json. torch is
imported here, never by the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any

import torch

import w2s.tiny  # noqa: F401  (registers the builder of tiny:...+<stage> model names)
from w2s.errors import W2SError
from w2s.evaluation.deception import (
    CONFLICT_PREFIX,
    ROLE_NO_CONFLICT,
    ROLE_STRONG_CEILING,
    ROLE_WEAK_CEILING,
    deception_score,
)
from w2s.methods.deception import SPEC
from w2s.methods.deception.config import (
    DEFAULT_BETA,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DeceptionConfig,
    data_options,
    plan_experiments,
    stage_config,
    sweep_jobs,
)
from w2s.methods.deception.labels import (  # noqa: F401  (oriented: a public name here)
    ground_truth,
    kept_helpful,
    oriented,
)
from w2s.methods.deception.summary import summarize
from w2s.models.probe import frozen_features, linear_head
from w2s.runs import Cache, cached_stage, content_hash, write_json
from w2s.train.losses import dpo_loss, explicit_conflict_loss, reward_model_loss, simpo_loss

VERSION = 1
"""Bumped when what a cached fit computes changes."""


# --------------------------------------------------------------------------------------------
# the losses of one batch of pairs


def objective_losses(objective: str, chosen: torch.Tensor, rejected: torch.Tensor, *,
                     truth: torch.Tensor, explicit: torch.Tensor, alpha: float = 0.5,
                     beta: float | None = None, gamma: float = 1.0,
                     ref_chosen: torch.Tensor | None = None,
                     ref_rejected: torch.Tensor | None = None,
                     target: torch.Tensor | None = None,
                     dpo_preference: str = "implicit") -> dict[str, torch.Tensor]:
    """Per-pair losses [B] of one objective plus the explicit-conflict term.

    ``chosen`` / ``rejected``: what the objective compares for the pair's preferred (by its
    training label) and other response: reward scores (``reward``), summed log-probs (``dpo``,
    with ``ref_chosen`` / ``ref_rejected`` from the reference model) or length-normalised
    log-probs (``simpo``). ``truth`` [B]: 1 where the training label agrees with the ground
    truth (the chosen response is the harmless one), 0 where it does not; ``explicit`` [B]: the
    weight of the explicit-conflict term (1 on weak-labeled target pairs of the explicit setting,
    0 elsewhere). ``target`` [B] (reward only): soft labels, the supervisor's probability for
    the labeled chosen response (:func:`~w2s.train.losses.reward_model_loss`); none = hard.
    ``dpo_preference`` (dpo only): what the model's preference is, for ``logit`` and the
    conflict term: ``implicit``, its implicit reward against the reference, or ``raw``, its
    plain log-prob difference ``chosen - rejected`` (the authors').

    Returns ``{"loss", "logit", "conflict"}``: ``logit`` is the model's preference for the
    LABELED chosen response (``r_c - r_r``; ``beta * h`` for DPO; ``beta * (avg_c - avg_r)`` for
    SimPO); the conflict term is :func:`~w2s.train.losses.explicit_conflict_loss` of the
    preference for the HARMLESS response, ``logit`` if ``truth`` else ``-logit`` (margin gamma
    for SimPO), so it pushes further wherever the model already prefers the harmful response.
    """
    if objective == "reward":
        main = reward_model_loss(chosen, rejected, target)
        logit = chosen.float() - rejected.float()
        margin = 0.0
    elif objective == "dpo":
        if ref_chosen is None or ref_rejected is None:
            raise ValueError("dpo needs the reference log-probs ref_chosen and ref_rejected")
        beta = DEFAULT_BETA["dpo"] if beta is None else beta
        main = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)
        if dpo_preference == "raw":
            logit = chosen.float() - rejected.float()
        else:
            logit = beta * ((chosen.float() - ref_chosen.float())
                            - (rejected.float() - ref_rejected.float()))
        margin = 0.0
    elif objective == "simpo":
        beta = DEFAULT_BETA["simpo"] if beta is None else beta
        main = simpo_loss(chosen, rejected, beta=beta, gamma=gamma)
        logit = beta * (chosen.float() - rejected.float())
        margin = gamma
    else:
        raise ValueError(f"unknown objective {objective!r}")
    harmless_logit = torch.where(truth.to(logit.device) > 0.5, logit, -logit)
    conflict = explicit.to(logit.device).float() * explicit_conflict_loss(
        harmless_logit, alpha=alpha, margin=margin)
    return {"loss": main + conflict, "logit": logit, "conflict": conflict}


# --------------------------------------------------------------------------------------------
# the experiment


class Experiment:
    """One ``w2s deception`` invocation: every chain and seed of it."""

    def __init__(self, cfg: DeceptionConfig, plan: dict):
        from w2s.models import pick_dtype
        from w2s.train import make_accelerator

        self.cfg, self.plan = cfg, plan
        self.cache = Cache()
        self.run = None  # the Run record, set once the run directory exists
        self.accelerator = make_accelerator(stage_config(cfg, 1e-5, 1.0, cfg.seed))
        # the weights' dtype (auto resolved on this device): a part of every cache key
        self.dtype = str(pick_dtype(cfg.dtype, self.accelerator.device)).removeprefix("torch.")
        self.trained = 0  # models trained (not found in the cache) by this invocation

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log(record)

    # ---- data --------------------------------------------------------------------------------
    def load_data(self, seed: int) -> dict:
        """Test pairs (``n_test``, the same for every seed), training pairs (``n_train``,
        sampled with ``seed``) in halves A (ground truth) and B (weak labels), and, for the
        implicit conflict, helpfulness pairs from the competing task's train split."""
        from w2s.data import halves, load_task, pooled_split

        cfg = self.cfg
        options = data_options(cfg)  # --single-turn: single-turn transcripts only
        pooled = cfg.test_pairs == "pooled"  # all of both splits, then n_test and n_train
        train = load_task(cfg.task, split="train", n=None if pooled else cfg.n_train,
                          seed=seed, **options)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            test = load_task(cfg.task, split="test", n=None if pooled else cfg.n_test, seed=0,
                             **options)
            if pooled and train.kind == test.kind == "preference":
                del caught[:]  # only the pooled test set's own size matters
                rows = pooled_split(train.rows, test.rows, n_train=cfg.n_train,
                                    n_test=cfg.n_test, seed=seed,
                                    group=lambda r: (r["prompt"], r["chosen"], r["rejected"]))
                train = dataclasses.replace(train, rows=rows["train"])
                test = dataclasses.replace(test, rows=rows["test"])
        for data in (train, test):
            if data.kind != "preference":
                raise W2SError(f"task '{cfg.task}' is a {data.kind} task; deception needs "
                               "pairwise preference data {prompt, chosen, rejected}")
        for w in caught:
            warnings.warn(str(w.message), w.category, stacklevel=2)
        # an identical pair never lands in both halves (one prompt may: other responses)
        a, b = halves(train.rows, seed=seed,
                      group=lambda r: (r["prompt"], r["chosen"], r["rejected"]))
        if len(a) < 2 or len(b) < 2:
            raise W2SError(f"task '{cfg.task}' has {len(train)} training pairs; need at least 4")
        helpful: list[dict] = []
        if self.plan["helpful_task"]:
            name = self.plan["helpful_task"]
            data = load_task(name, split="train", n=cfg.n_helpful or len(b), seed=seed,
                             **options)
            if data.kind != "preference":
                raise W2SError(f"--helpful-task '{name}' is a {data.kind} task; the implicit "
                               "conflict needs preference pairs of the competing dimension")
            if not data.rows:
                raise W2SError(f"--helpful-task '{name}' has no training pairs; the implicit "
                               "conflict needs them")
            helpful = data.rows
        fingerprints = {"train": train.fingerprint(), "test": test.fingerprint(),
                        "a": content_hash(a), "b": content_hash(b),
                        "helpful": content_hash(helpful) if helpful else None,
                        "options": options}
        return {"a": a, "b": b, "test": test.rows, "helpful": helpful,
                "format": train.meta.get("prompt_format", "plain"), "fingerprints": fingerprints,
                "small_test": [str(w.message) for w in caught]}

    # ---- one chain ---------------------------------------------------------------------------
    def run_chain(self, models: list[str], seed: int, data: dict) -> dict:
        """Ceilings on A, weak labels on B (through the intermediate when bootstrapping), the
        strong model on them under each conflict setting, the scores."""
        cfg, settings = self.cfg, self.plan["settings"]
        weak, *via, strong = models
        pair = f"{weak}->{strong}/seed{seed}" if not via else "->".join(models) + f"/seed{seed}"
        trained_before = self.trained
        truth_a = ground_truth(data["a"])

        fits = {ROLE_WEAK_CEILING: self.fit(weak, "weak ceiling", truth_a, seed, data,
                                            predict_b=True),
                ROLE_STRONG_CEILING: self.fit(strong, "strong ceiling", truth_a, seed, data)}
        supervisor, probs, labels = weak, fits[ROLE_WEAK_CEILING]["b"], []
        label_rows = []  # every label a supervisor gave on half B (weak_labels.jsonl)

        def record(learner: str) -> None:
            threshold = cfg.conf_threshold
            label_rows.extend({"id": r["id"], "pair": pair, "labeller": supervisor,
                               "learner": learner, "prob": s, "correct": s >= 0.5,
                               "kept": threshold is None or max(s, 1.0 - s) >= threshold}
                              for r, s in zip(data["b"], probs, strict=True))

        for name in via:
            rows, stats = oriented(data["b"], probs, cfg.conf_threshold)
            labels.append({"from": supervisor, "for": name, **stats})
            record(name)
            fits["intermediate"] = self.fit(name, "intermediate", rows, seed, data,
                                            predict_b=True)
            supervisor, probs = name, fits["intermediate"]["b"]
        weak_labeled, stats = oriented(data["b"], probs, cfg.conf_threshold)
        labels.append({"from": supervisor, "for": strong, **stats})
        record(strong)
        helpful = ground_truth(data["helpful"])
        if cfg.conf_threshold is not None and cfg.filter_helpful:
            kept = [max(s, 1.0 - s) >= cfg.conf_threshold for s in probs]
            helpful = kept_helpful(helpful, kept)
        for setting in ["none", *settings]:
            rows = [dict(r, explicit=1.0 if setting == "explicit" else 0.0)
                    for r in weak_labeled]
            if setting == "implicit":
                rows += helpful
            fits[CONFLICT_PREFIX + setting] = self.fit(strong, f"w2s ({setting})", rows, seed,
                                                       data)

        out_rows = []
        for role, res in fits.items():
            model = {ROLE_WEAK_CEILING: weak, "intermediate": via[0] if via else None}.get(
                role, strong)
            for r, p in zip(data["test"], res["test"], strict=True):
                out_rows.append({"id": r["id"], "pair": pair, "role": role, "model": model,
                                 "prob": p, "correct": p >= 0.5})
        correct = {role: [p >= 0.5 for p in res["test"]] for role, res in fits.items()}
        base = [correct[ROLE_WEAK_CEILING], correct[ROLE_STRONG_CEILING],
                correct[ROLE_NO_CONFLICT]]
        scores, columns = {}, {}
        for setting in settings:
            columns[setting] = [*base, correct[CONFLICT_PREFIX + setting]]
            scores[setting] = deception_score(*columns[setting])
        result = {"pair": pair, "models": models, "seed": seed, "task": cfg.task,
                  "objective": cfg.objective, "n_test": len(data["test"]),
                  "accuracy": {role: sum(c) / len(c) for role, c in correct.items()},
                  "labels": labels, "scores": scores,
                  "stages": {role: {k: res[k] for k in ("cached", "cache_key", "lr", "train")}
                             for role, res in fits.items()},
                  "trained_models": self.trained - trained_before,
                  "small_test_warning": data["small_test"][0] if data["small_test"] else None,
                  "correct": columns, "rows": out_rows, "label_rows": label_rows}
        self.log({"stage": "deception", "pair": pair,
                  **{f"score_{s}": scores[s]["score"] for s in settings},
                  "accuracy": result["accuracy"]})
        return result

    # ---- models ------------------------------------------------------------------------------
    def _format(self, data: dict) -> dict:
        """How prompt and response are joined: HH transcripts stay plain text (the response
        after one space, as the authors' tokenization); other prompts use the model's chat
        template when it has one."""
        return {"chat": data["format"] != "hh", "sep": " "}

    def fit(self, name: str, what: str, rows: list[dict], seed: int, data: dict,
            predict_b: bool = False) -> dict:
        """Train ``name`` with the configured objective on ``rows`` (pairs with ``truth`` and
        ``explicit``) and return its preference probabilities for the ground-truth chosen
        response on the test pairs (and on half B when ``predict_b``).

        A :func:`~w2s.runs.cached_stage` keyed by everything that determines the result (its
        work counted as the compute stage ``what``); training checkpoints go to the stage's
        ``<cache>/inprogress/<key>`` so an interrupted training resumes there.
        """
        from w2s.models import resolve_model
        from w2s.models.resolve import model_identity

        cfg = self.cfg
        objective = cfg.objective
        lr, epochs = DEFAULT_LR[objective], DEFAULT_EPOCHS[objective]
        tcfg = stage_config(cfg, lr, epochs, seed)
        sft = (stage_config(cfg, lr, epochs, seed, sft=True)
               if objective != "reward" and cfg.train.sft_epochs > 0 else None)
        resolved = resolve_model(name)
        uses_conflict = any(r["explicit"] for r in rows)
        parts = {"model": model_identity(resolved),
                 "objective": objective, "mode": cfg.mode,
                 "lora": [cfg.lora_r, cfg.lora_alpha] if cfg.mode == "lora" else None,
                 "beta": cfg.beta, "gamma": cfg.simpo_gamma if objective == "simpo" else None,
                 "dpo_preference": cfg.dpo_preference if objective == "dpo" else None,
                 "alpha": cfg.alpha if uses_conflict else None,
                 "format": self._format(data), "max_ctx": cfg.max_ctx, "eos": cfg.eos,
                 "rows": content_hash([[r["prompt"], r["chosen"], r["rejected"], r["truth"],
                                        r["explicit"]] for r in rows]),
                 # soft labels change the training only where they are not 1 (weak labels)
                 "soft_labels": (content_hash([round(r.get("label_prob", 1.0), 6) for r in rows])
                                 if self._soft(objective)
                                 and any(r.get("label_prob", 1.0) != 1.0 for r in rows)
                                 else None),
                 "train": dataclasses.asdict(tcfg),
                 "sft": dataclasses.asdict(sft) if sft else None, "seed": seed,
                 "test": data["fingerprints"]["test"],
                 "b": data["fingerprints"]["b"] if predict_b else None, "dtype": self.dtype,
                 "version": VERSION}
        info = {"model": name, "what": what, "seed": seed, "n_train": len(rows)}
        with cached_stage(self.cache, f"deception-{objective}", what, **parts) as st:
            if st.done:
                out = json.loads((st.path / "result.json").read_text())
                self.log({"stage": "fit", "cached": True, "cache_key": st.key, **info})
                return {**out, "cached": True, "cache_key": st.key}
            self.log({"stage": "fit", "cached": False, "cache_key": st.key, **info})
            out = self._train_and_predict(name, what, rows, seed, data, predict_b, tcfg, sft,
                                          st.progress)
            self.trained += 1
            st.publish(lambda folder: write_json(folder / "result.json", out), meta=info)
        acc = sum(p >= 0.5 for p in out["test"]) / len(out["test"])
        self.log({"stage": "fitted", "test_acc": acc, **info})
        return {**out, "cached": False, "cache_key": st.key}

    def _soft(self, objective: str) -> bool:
        """Reward models learn the supervisor's soft probability (``--weak-labels soft``)."""
        return objective == "reward" and self.cfg.weak_labels == "soft"

    def _load(self, name: str, seed: int):
        """(model, tokenizer): a one-output reward model (full / lora / probe) or a causal LM."""
        from w2s.models import LoraSettings, load_causal_lm, load_classifier

        cfg = self.cfg
        lora = LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha) if cfg.mode == "lora" else None
        kwargs = dict(dtype=cfg.dtype, device=self.accelerator.device, lora=lora, seed=seed,
                      gradient_checkpointing=cfg.train.gradient_checkpointing)
        if cfg.objective != "reward":
            return load_causal_lm(name, **kwargs)
        model, tok = load_classifier(name, num_labels=1, **kwargs)
        if cfg.mode == "probe":
            for p in model.backbone.parameters():
                p.requires_grad_(False)
        return model, tok

    def _train_and_predict(self, name: str, what: str, rows: list[dict], seed: int, data: dict,
                           predict_b: bool, tcfg, sft, progress) -> dict:
        from w2s.train import train
        from w2s.train.preference import (
            collate_pairs,
            encode_pairs,
            reference_logprobs,
            score_items,
            sequence_logprobs_of,
            train_sft,
        )

        cfg, objective = self.cfg, self.cfg.objective
        fmt = self._format(data)
        model, tok = self._load(name, seed)
        pad = tok.pad_token_id  # the loaders always set one (EOS when the model has none)

        def enc(pairs: list[dict]) -> list[dict]:
            return encode_pairs(tok, pairs, max_len=cfg.max_ctx, eos=cfg.eos,
                                truncation="left", **fmt)

        log = lambda rec: self.log({"stage": f"train {what}", "model": name, **rec})  # noqa: E731
        examples = [{**e, "truth": r["truth"], "explicit": r["explicit"],
                     "label_prob": r.get("label_prob", 1.0)}
                    for e, r in zip(enc(rows), rows, strict=True)]
        evals = {"test": enc(data["test"])}
        if predict_b:
            evals["b"] = enc(data["b"])
        if objective == "reward" and cfg.mode == "probe":
            return self._train_probe(model, name, what, examples, evals, pad, tcfg, progress, log)
        record: dict[str, Any] = {}
        refs: dict[str, tuple[list[float], list[float]]] = {}
        if objective != "reward":
            if sft is not None:  # SFT on the responses the training labels prefer
                result = train_sft(model, tok, [{"prompt": r["prompt"], "response": r["chosen"]}
                                                for r in rows], sft, max_len=cfg.max_ctx,
                                   eos=cfg.eos, truncation="left", checkpoint_dir=progress / "sft",
                                   accelerator=self.accelerator, log=log,
                                   description=f"sft {what} {name}", **fmt)
                record["sft"] = _brief(result)
                if cfg.mode == "lora":  # the SFT model becomes the base (and DPO's reference)
                    model = self._fresh_adapters(model, name, seed)
            if objective == "dpo":
                reference_logprobs(model, examples, pad, batch_size=cfg.eval_batch_size)
                for k, items in evals.items():
                    refs[k] = (score_items(model, [e["chosen"] for e in items], pad,
                                           batch_size=cfg.eval_batch_size, reference=True)[0],
                               score_items(model, [e["rejected"] for e in items], pad,
                                           batch_size=cfg.eval_batch_size, reference=True)[0])
        soft = self._soft(objective)

        def loss_fn(m, batch):
            b = batch["input_ids"].shape[0] // 2
            if objective == "reward":
                scores = m(batch["input_ids"], batch["attention_mask"])[:, 0]
                chosen, rejected = scores[:b], scores[b:]
            else:
                summed, n = sequence_logprobs_of(m, batch)
                chosen, rejected = summed[:b], summed[b:]
                if objective == "simpo":
                    chosen, rejected = chosen / n[:b].clamp_min(1), rejected / n[b:].clamp_min(1)
            out = objective_losses(objective, chosen, rejected, truth=batch["truth"],
                                   explicit=batch["explicit"], alpha=cfg.alpha, beta=cfg.beta,
                                   gamma=cfg.simpo_gamma, ref_chosen=batch.get("ref_chosen"),
                                   ref_rejected=batch.get("ref_rejected"),
                                   target=batch["label_prob"] if soft else None,
                                   dpo_preference=cfg.dpo_preference)
            logit = out["logit"].detach()
            return {"loss": out["loss"], "conflict_term": out["conflict"].detach(),
                    "label_accuracy": (logit > 0).float()}

        result = train(model, examples, loss_fn=loss_fn,
                       collate=lambda items: collate_pairs(items, pad), config=tcfg,
                       checkpoint_dir=progress / "train", accelerator=self.accelerator,
                       description=f"{what} {name}", log=log)
        record["train"] = _brief(result)
        preds = {k: self._predict(model, pad, items, refs.get(k)) for k, items in evals.items()}
        return {**preds, "train": record, "lr": tcfg.lr}

    def _train_probe(self, clf, name: str, what: str, examples: list[dict],
                     evals: dict[str, list[dict]], pad: int, tcfg, progress, log) -> dict:
        """A reward model as a linear probe: the frozen body's pooled features of every
        (prompt, response) are computed ONCE (and cached), then only a zero-initialised linear
        head trains on them, in seconds; the same losses as the full model (conflict term
        included), read on head(features)."""
        from w2s.train import train

        items = {e[side] for group in (examples, *evals.values()) for e in group
                 for side in ("chosen", "rejected")}
        feats = self._probe_features(clf, name, sorted(items, key=lambda e: len(e.input_ids)),
                                     pad)
        head = linear_head(clf.head.in_features, 1, self.accelerator.device)
        train_rows = [{"chosen": feats[e["chosen"]], "rejected": feats[e["rejected"]],
                       "truth": e["truth"], "explicit": e["explicit"],
                       "label_prob": e["label_prob"]} for e in examples]

        def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
            return {"features": torch.stack([r["chosen"] for r in rows] +
                                            [r["rejected"] for r in rows]),
                    "truth": torch.tensor([float(r["truth"]) for r in rows]),
                    "explicit": torch.tensor([float(r["explicit"]) for r in rows]),
                    "label_prob": torch.tensor([float(r["label_prob"]) for r in rows])}

        def loss_fn(m, batch):
            scores = m(batch["features"].float())[:, 0]
            b = scores.shape[0] // 2
            out = objective_losses("reward", scores[:b], scores[b:], truth=batch["truth"],
                                   explicit=batch["explicit"], alpha=self.cfg.alpha,
                                   target=batch["label_prob"] if self._soft("reward") else None)
            return {"loss": out["loss"], "conflict_term": out["conflict"].detach(),
                    "label_accuracy": (out["logit"].detach() > 0).float()}

        result = train(head, train_rows, loss_fn=loss_fn, collate=collate, config=tcfg,
                       checkpoint_dir=progress / "train", accelerator=self.accelerator,
                       description=f"{what} {name} (probe)", log=log)
        preds = {}
        with torch.no_grad():
            for k, group in evals.items():
                c = torch.stack([feats[e["chosen"]] for e in group]).to(head.weight.device)
                r = torch.stack([feats[e["rejected"]] for e in group]).to(head.weight.device)
                logit = (head(c.float()) - head(r.float()))[:, 0].double()
                preds[k] = torch.sigmoid(logit).cpu().tolist()
        return {**preds, "train": {"train": _brief(result)}, "lr": tcfg.lr}

    def _probe_features(self, clf, name: str, items: list, pad: int) -> dict:
        """``{Encoded: pooled feature [H] fp32 CPU}`` of the frozen body, cached by the model's
        identity, dtype and the token ids."""
        from w2s.models import resolve_model
        from w2s.models.resolve import model_identity
        from w2s.train.preference import collate

        ids = content_hash([list(e.input_ids) for e in items])
        with cached_stage(self.cache, "deception-features", "features",
                          model=model_identity(resolve_model(name)), dtype=self.dtype,
                          ids=ids) as st:
            if st.done:
                feats = torch.load(st.path / "features.pt", weights_only=True)
                self.log({"stage": "features", "model": name, "n": len(items), "cached": True})
            else:
                bs = self.cfg.eval_batch_size
                batches = (collate(items[i:i + bs], pad) for i in range(0, len(items), bs))
                feats = frozen_features(clf, ((b["input_ids"], b["attention_mask"])
                                              for b in batches), self.accelerator.device)
                st.publish(lambda folder: torch.save(feats, folder / "features.pt"),
                           meta={"model": name, "n": len(items)})
                self.log({"stage": "features", "model": name, "n": len(items), "cached": False})
        return {e: feats[i] for i, e in enumerate(items)}

    def _fresh_adapters(self, model, name: str, seed: int):
        """Merge the SFT adapters into the weights and put new ones on top (LoRA + DPO/SimPO):
        with adapters disabled the model is then the SFT model, DPO's reference."""
        from w2s.models import LoraSettings, apply_lora, resolve_model

        cfg = self.cfg
        merged = model.merge_and_unload()
        targets = resolve_model(name).lora_targets
        return apply_lora(merged, LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha,
                                               targets=targets), seed=seed)

    @torch.no_grad()
    def _predict(self, model, pad: int, items: list[dict],
                 refs: tuple[list[float], list[float]] | None) -> list[float]:
        """The probability of preferring each pair's (ground-truth) chosen response."""
        from w2s.train.preference import reward_scores, score_items

        cfg, objective = self.cfg, self.cfg.objective
        bs = cfg.eval_batch_size
        chosen = [e["chosen"] for e in items]
        rejected = [e["rejected"] for e in items]
        if objective == "reward":
            c, r = reward_scores(model, chosen, pad, batch_size=bs), \
                reward_scores(model, rejected, pad, batch_size=bs)
            logits = [x - y for x, y in zip(c, r, strict=True)]
        else:
            (c, nc), (r, nr) = (score_items(model, chosen, pad, batch_size=bs),
                                score_items(model, rejected, pad, batch_size=bs))
            beta = cfg.beta if cfg.beta is not None else DEFAULT_BETA[objective]
            if objective == "dpo" and cfg.dpo_preference == "raw":
                logits = [x - y for x, y in zip(c, r, strict=True)]  # the policy's own preference
            elif objective == "dpo":
                ref_c, ref_r = refs
                logits = [beta * ((x - rx) - (y - ry))
                          for x, y, rx, ry in zip(c, r, ref_c, ref_r, strict=True)]
            else:
                logits = [beta * (x / max(1, a) - y / max(1, b))
                          for x, y, a, b in zip(c, r, nc, nr, strict=True)]
        return torch.sigmoid(torch.tensor(logits, dtype=torch.float64)).tolist()


def _brief(result) -> dict:
    return {k: v for k, v in result.to_dict().items() if k != "losses"}


# --------------------------------------------------------------------------------------------
# the run


def run(cfg: DeceptionConfig) -> dict:
    """Run every experiment the config asks for in one run directory; returns metrics.json."""

    from w2s.runs import Run

    plan = plan_experiments(cfg)  # bad input fails here, before any directory exists
    exp = Experiment(cfg, plan)
    data = {seed: exp.load_data(seed) for seed in plan["seeds"]}
    env = {"seeds": plan["seeds"], "chains": plan["chains"], "settings": plan["settings"],
           "helpful_task": plan["helpful_task"],
           "data": {str(s): d["fingerprints"] for s, d in data.items()}}
    with Run.start(SPEC.name, cfg, headline=SPEC.headline, run_dir=cfg.run_dir, env_extra=env) as run:
        if cfg.launcher != "none":
            from w2s.launch import fan_out

            run.keep("the sweep's job logs (jobs/*.log)")  # a failed job is not bad input
            fan_out("deception", cfg, sweep_jobs(plan), run)  # into the shared cache
        exp.run = run
        for note in plan["notes"]:
            run.log({"event": "note", "note": note})
        results = [exp.run_chain(chain, seed, data[seed])
                   for seed in plan["seeds"] for chain in plan["chains"]]
        run.write_rows("predictions.jsonl", [r for res in results for r in res.pop("rows")])
        run.write_rows("weak_labels.jsonl", [r for res in results for r in res.pop("label_rows")])
        return run.finish(summarize(results, plan, run))

