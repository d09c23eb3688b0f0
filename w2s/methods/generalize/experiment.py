"""``w2s generalize``'s experiment: :func:`run` and the steps it calls.

:func:`run` reads like the paper: load the data, run every chain (weak ceiling -> weak labels ->
strong ceiling -> strong on weak labels -> PGR) for every seed, write the predictions, summarise.
:class:`Experiment` holds what every step shares (config, cache, accelerator, run record) and
has one method per step: ``load_data`` (train / test, halves A and B), ``run_chain``, ``fit``
(train one classifier and predict, cached), and the model sources (the tinyworld pretraining,
optional generative fine-tuning). torch is imported here, never by the CLI.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import torch

from w2s.data import folds
from w2s.errors import W2SError
from w2s.evaluation import ROLE_CEILING, ROLE_W2S, ROLE_WEAK, pgr_from_predictions
from w2s.methods.generalize import SPEC
from w2s.methods.generalize.config import (
    GeneralizeConfig,
    plan_experiments,
    stage_train_config,
    sweep_jobs,
)
from w2s.models.batching import pad_right
from w2s.models.probe import frozen_features, linear_head
from w2s.runs import Cache, cached_stage, content_hash, write_json
from w2s.tiny import pretrained_tiny  # w2s.tiny also registers tiny:...+<stage> names
from w2s.train.losses import logconf_losses, product_losses, xent_losses

PROBE_LR = 1e-3
"""Default lr of a linear probe (a zero-init head on frozen features takes far larger steps than
a fine-tuned body's 5e-5)."""


def run(cfg: GeneralizeConfig) -> dict:
    """Run every experiment the config asks for in one run directory; returns metrics.json."""
    from w2s.launch import fan_out
    from w2s.runs import Run

    plan = plan_experiments(cfg)  # bad input fails here, before any directory exists
    exp = Experiment(cfg)
    data = {seed: exp.load_data(seed) for seed in plan["seeds"]}
    env = {"seeds": plan["seeds"], "data": {str(s): d["fingerprints"] for s, d in data.items()},
           "chains": plan["chains"]}
    with Run.start(SPEC.name, cfg, headline=SPEC.headline, run_dir=cfg.run_dir, env_extra=env) as run:
        if cfg.launcher != "none":
            run.keep("the sweep's job logs (jobs/*.log)")  # a failed job is not bad input
            fan_out("generalize", cfg, sweep_jobs(cfg, plan), run)  # into the shared cache
        exp.run = run
        results = []
        for seed in plan["seeds"]:
            for chain in plan["chains"]:
                results.append(exp.run_chain(chain, seed, data[seed]))
        for note in plan["notes"]:
            run.log({"event": "note", "note": note})
        run.write_rows("predictions.jsonl", [r for res in results for r in res.pop("rows")])
        run.write_rows("weak_labels.jsonl", [r for res in results for r in res.pop("label_rows")])
        metrics = summarize(results, cfg, run)
        return run.finish(metrics)


class Experiment:
    """One ``w2s generalize`` invocation: every chain and seed of it."""

    def __init__(self, cfg: GeneralizeConfig):
        from w2s.models import pick_dtype
        from w2s.train import make_accelerator

        self.cfg = cfg
        self.cache = Cache()
        self.run = None  # the Run record, set once the run directory exists
        stage = stage_train_config(cfg.strong_train, 1e-5, cfg.seed)
        self.accelerator = make_accelerator(stage)
        # the weights' dtype (auto resolved on this device): a part of every cache key
        self.dtype = str(pick_dtype(cfg.dtype, self.accelerator.device)).removeprefix("torch.")
        self.trained = 0  # models trained (not found in the cache) by this invocation
        self._sources: dict[tuple[str, bool], str] = {}

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log(record)

    # ---- data --------------------------------------------------------------------------------
    def load_data(self, seed: int) -> dict:
        """Train rows (``n_train``, sampled with ``seed``) split into halves A and B; test rows
        (``n_test``, the same for every seed). Binary tasks only."""
        from w2s.data import halves, load_task

        cfg = self.cfg
        options = ({"entities": cfg.world.entities, "world_seed": cfg.world.world_seed}
                   if cfg.task == "tinyworld" else {})
        if cfg.task == "tinyworld":
            import w2s.data.tinyworld  # noqa: F401  (registers the task)
        # warnings about the data (too few rows, a small test set) are held back until the data
        # passes the checks below, so bad data is one error line, not warnings then an error
        with warnings.catch_warnings(record=True) as held:
            warnings.simplefilter("always")
            train = load_task(cfg.task, split="train", n=cfg.n_train, seed=seed, **options)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            test = load_task(cfg.task, split="test", n=cfg.n_test, seed=0, **options)
        self._check_labels(train, test)
        for w in [*held, *caught]:
            warnings.warn(str(w.message), w.category, stacklevel=2)
        a, b = halves(train.rows, seed=seed, group="text")  # a text never in both halves
        if len(a) < 2 or len(b) < 2:
            raise W2SError(f"task '{cfg.task}' has {len(train)} training rows; need at least 4")
        fingerprints = {"train": train.fingerprint(), "test": test.fingerprint(),
                        "a": content_hash(a), "b": content_hash(b)}
        return {"a": a, "b": b, "test": test.rows, "fingerprints": fingerprints,
                "small_test": [str(w.message) for w in caught]}

    def _check_labels(self, train, test) -> None:
        """A binary classification task with both classes, or a one-line error."""
        cfg = self.cfg
        if train.kind != "classification":
            raise W2SError(f"task '{cfg.task}' is a {train.kind} task; generalize needs a binary "
                           "classification task (`w2s tasks`)")
        labels = {r["label"] for r in train.rows} | {r["label"] for r in test.rows}
        if len(labels) < 2:
            raise W2SError(f"task '{cfg.task}' has one class only (label {labels.pop()}); weak-"
                           "to-strong needs both labels 0 and 1 in the data")
        if labels != {0, 1}:
            raise W2SError(f"task '{cfg.task}' has labels {sorted(labels)}; generalize is binary "
                           "(labels 0 and 1)")

    # ---- one chain ---------------------------------------------------------------------------
    def run_chain(self, models: list[str], seed: int, data: dict) -> dict:
        """m1 on A with ground truth labels B; each next model learns B from the previous one's
        labels; the last is also trained on B with ground truth (the strong ceiling)."""
        cfg = self.cfg
        pair = f"{models[0]}->{models[-1]}/seed{seed}"
        if len(models) > 2:
            pair = "->".join(models) + f"/seed{seed}"
        trained_before = self.trained
        truth_a = [_onehot(r["label"]) for r in data["a"]]

        links = []
        weak = self.fit(models[0], "weak", data["a"], truth_a, "xent", seed, data, "weak")
        links.append({"model": models[0], "trained_on": "A, ground truth", **_summary(weak)})
        b = data["b"]
        parts = self._chain_parts(len(models) - 1, seed, data)  # the B rows each learner gets
        labels = weak["b"]  # the current labeller's p(label=1) on every row of half B
        last = weak
        fits = [weak]  # every link of the chain, weak first, the W2S model last
        label_rows = []  # the soft labels each link gave the next one
        for k, name in enumerate(models[1:], start=1):
            role = "strong" if k == len(models) - 1 else "weak"
            rows_k, given = [b[i] for i in parts[k - 1]], [labels[i] for i in parts[k - 1]]
            label_rows += [{"id": r["id"], "pair": pair, "labeller": models[k - 1],
                            "learner": name, "label": r["label"], "prob": p,
                            "correct": (p > 0.5) == bool(r["label"])}
                           for r, p in zip(rows_k, given, strict=True)]
            last = self.fit(name, role, rows_k, [[1.0 - p, p] for p in given], cfg.loss, seed,
                            data, "w2s" if role == "strong" else "intermediate")
            fits.append(last)
            where = "B" if len(parts[k - 1]) == len(b) else f"B part {k} of {len(parts)}"
            links.append({"model": name, "trained_on": f"{where}, labels of {models[k - 1]}",
                          "label_acc_on_b": _acc(given, rows_k), **_summary(last),
                          # how far the link reproduces the labels it was trained on
                          "own_label_agreement": _agreement(
                              [last["b"][i] for i in parts[k - 1]], given)})
            if role == "weak":  # a middle link: it labels the next learner's rows
                passed = (self._out_of_fold(name, seed, data, labels)
                          if cfg.chain_labels == "kfold" else last["b"])
                links[-1]["passed_label_agreement"] = _agreement(
                    [passed[i] for i in parts[k]], [labels[i] for i in parts[k]])
                labels = passed
        ceiling_rows = [b[i] for i in parts[-1]]
        ceiling = self.fit(models[-1], "strong", ceiling_rows,
                           [_onehot(r["label"]) for r in ceiling_rows], "xent", seed, data,
                           "strong_ceiling")

        rows = []
        middle = [(f"intermediate_{k}", res) for k, res in enumerate(fits[1:-1], start=2)]
        for role, res in ((ROLE_WEAK, weak), *middle, (ROLE_CEILING, ceiling), (ROLE_W2S, last)):
            for r, p in zip(data["test"], res["test"], strict=True):
                rows.append({"id": r["id"], "role": role, "pair": pair, "label": r["label"],
                             "prob": p, "correct": (p > 0.5) == bool(r["label"])})
        for k, link in enumerate(links[1:-1], start=2):
            link["note"] = f"intermediate link {k} of the chain"
        figures = pgr_from_predictions(rows, n_boot=cfg.n_boot, seed=0)[pair]
        result = {"pair_name": pair, "models": models, "seed": seed,
                  "weak_acc": figures["weak_acc"], "strong_ceiling_acc":
                  figures["strong_ceiling_acc"], "w2s_acc": figures["w2s_acc"],
                  "pgr": figures["pgr"], "pgr_ci_low": figures["ci_low"],
                  "pgr_ci_high": figures["ci_high"], "pgr_reason": figures["reason"],
                  "pgr_ci_undefined_resamples": figures["n_boot_undefined"],
                  "n_test": figures["n"], "weak_label_acc_on_b": _acc(weak["b"], data["b"]),
                  "chain": links, "stages": {"weak": _details(weak),
                                             "strong_ceiling": _details(ceiling),
                                             "w2s": _details(last)},
                  "trained_models": self.trained - trained_before,
                  "small_test_warning": data["small_test"][0] if data["small_test"] else None,
                  "rows": rows, "label_rows": label_rows}
        self.log({"stage": "pgr", "pair": pair, **{k: result[k] for k in
                  ("weak_acc", "strong_ceiling_acc", "w2s_acc", "pgr", "pgr_reason")}})
        return result

    def _chain_parts(self, n_learners: int, seed: int, data: dict) -> list[list[int]]:
        """The half-B rows (positions) each learner of a chain trains on: all of B for every
        learner, or (``chain_labels: disjoint``) one disjoint part each."""
        b = data["b"]
        if self.cfg.chain_labels != "disjoint" or n_learners == 1:
            return [list(range(len(b)))] * n_learners
        parts = folds(list(range(len(b))), n_learners, seed, group=lambda i: b[i]["text"])
        if min(len(p) for p in parts) < 2:
            raise W2SError(f"chain_labels disjoint splits half B ({len(b)} rows) into "
                           f"{n_learners} parts, and one has fewer than 2 rows; raise --n-train "
                           "or use chain_labels kfold")
        return parts

    def _out_of_fold(self, name: str, seed: int, data: dict, labels: list[float]) -> list[float]:
        """``name``'s out-of-fold p(label=1) on half B (``chain_labels: kfold``): per fold, a fit
        on the other folds' rows with ``labels`` predicts the held-out fold."""
        cfg, b = self.cfg, data["b"]
        out = [0.0] * len(b)
        for held in folds(list(range(len(b))), cfg.chain_folds, seed,
                          group=lambda i: b[i]["text"]):
            rest = sorted(set(range(len(b))) - set(held))
            res = self.fit(name, "weak", [b[i] for i in rest],
                           [[1.0 - labels[i], labels[i]] for i in rest], cfg.loss, seed, data,
                           "intermediate_fold")
            for i in held:
                out[i] = res["b"][i]
        return out

    # ---- models ------------------------------------------------------------------------------
    def source(self, name: str, role: str = "strong") -> str:
        """Where to load ``name`` from, in ``role`` (weak / strong): itself, or (tinyworld) its
        pretrained copy, then (gen_finetune, for the roles ``gen_finetune_models`` names) its
        copy LM-fine-tuned on the task texts. Cached, so built once."""
        cfg = self.cfg
        generative = cfg.gen_finetune and (cfg.gen_finetune_models == "all" or role == "strong")
        if (name, generative) in self._sources:
            return self._sources[(name, generative)]
        src = name
        if cfg.task == "tinyworld" and name.startswith("tiny:"):
            src = str(pretrained_tiny(name, cfg.world, log=self.log))
        if generative:
            src = self._gen_finetuned(src)
        self._sources[(name, generative)] = src
        return src

    def _model_id(self, name: str, role: str = "strong") -> dict:
        from w2s.models import resolve_model
        from w2s.models.resolve import model_identity

        return {"name": name, **model_identity(resolve_model(self.source(name, role)))}

    def _gen_finetuned(self, src: str) -> str:
        """The model LM-fine-tuned on the task's training texts (no labels): Burns et al.'s
        optional generative fine-tuning, cached as a save_pretrained folder."""
        from w2s.data import load_task
        from w2s.models import load_causal_lm, resolve_model
        from w2s.models.resolve import model_identity
        from w2s.train.lm import train_lm

        cfg = self.cfg
        options = ({"entities": cfg.world.entities, "world_seed": cfg.world.world_seed}
                   if cfg.task == "tinyworld" else {})
        texts = [r["text"] for r in load_task(cfg.task, split="train", n=cfg.n_train, seed=0,
                                              **options).rows]
        resolved = resolve_model(src)
        tcfg = stage_train_config(dataclasses.replace(cfg.strong_train, epochs=cfg.gen_epochs,
                                                      max_steps=None),
                                  resolved.default_lr, 0)
        with cached_stage(self.cache, "generalize-genft", "gen_finetune",
                          model=model_identity(resolved), texts=content_hash(texts),
                          train=dataclasses.asdict(tcfg), max_ctx=cfg.max_ctx,
                          dtype=self.dtype) as st:
            if st.done:
                return str(st.path)
            model, tok = load_causal_lm(src, dtype=cfg.dtype, device=self.accelerator.device)
            examples = [_encode(tok, t, cfg.max_ctx)["input_ids"] for t in texts]
            result = train_lm(model, examples, tok.pad_token_id, tcfg,
                              checkpoint_dir=st.progress, accelerator=self.accelerator,
                              description="generative fine-tuning",
                              log=lambda rec: self.log({"stage": "gen_finetune", **rec}))
            self.log({"stage": "gen_finetune", "model": src, "steps": result.steps})

            def save(folder: Path) -> None:
                model.save_pretrained(folder)
                tok.save_pretrained(folder)

            return str(st.publish(save, meta={"model": src}))

    # ---- train one classifier and predict (cached) ------------------------------------------
    def fit(self, name: str, role: str, rows: list[dict], targets: list[list[float]],
            loss: str, seed: int, data: dict, label: str | None = None) -> dict:
        """Fine-tune ``name`` on ``rows`` with soft ``targets`` [p0, p1] and ``loss``; return
        p(label=1) on the test rows and on half B, with the training record. ``label`` names
        the step in the run's compute record (``weak``, ``w2s``, ``strong_ceiling``; default
        ``role``).

        Cached under a key of everything that determines the result; training checkpoints go to
        ``<cache>/inprogress/<key>`` so an interrupted training resumes there.
        """
        from w2s.models import resolve_model

        cfg = self.cfg
        stage = cfg.weak_train if role == "weak" else cfg.strong_train
        source = self.source(name, role)
        default_lr = PROBE_LR if cfg.mode == "probe" else resolve_model(source).default_lr
        tcfg = stage_train_config(stage, default_lr, seed)
        loss_params = ({"aux_alpha": cfg.aux_alpha, "warmup_frac": cfg.warmup_frac}
                       if loss == "logconf" else {})
        parts = {"model": self._model_id(name, role), "mode": cfg.mode, "max_ctx": cfg.max_ctx,
                 "lora": [cfg.lora_r, cfg.lora_alpha] if cfg.mode == "lora" else None,
                 "rows": content_hash([[r["id"], r["text"]] for r in rows]),
                 "labels": content_hash([[round(p, 6) for p in t] for t in targets]),
                 "loss": loss, "loss_params": loss_params, "train": dataclasses.asdict(tcfg),
                 "seed": seed, "test": data["fingerprints"]["test"],
                 "b": data["fingerprints"]["b"], "dtype": self.dtype,
                 "version": 2}  # 2: logconf pools its weak positive rate like its quantile
        what = {"model": name, "role": role, "loss": loss, "seed": seed, "n_train": len(rows)}
        with cached_stage(self.cache, f"generalize-{role}-{loss}", label or role, **parts) as st:
            self.log({"stage": "fit", "cached": st.done, "cache_key": st.key, **what})
            if not st.done:
                out, result = self._train_and_predict(name, role, rows, targets, loss, seed,
                                                      tcfg, data, st.progress)

                def save(folder: Path) -> None:
                    write_json(folder / "result.json", out)
                    final = st.progress / (st.progress / "latest").read_text().strip()
                    shutil.move(str(final), folder / "checkpoint")  # the trained weights

                st.publish(save, meta=what)
                self.log({"stage": "fitted", "test_acc": out["test_acc"],
                          "resumed_from": result.resumed_from, **what})
                return {**out, "cached": False, "cache_key": st.key}
        return {**_read_json(st.path / "result.json"), "cached": True, "cache_key": st.key}

    def _train_and_predict(self, name: str, role: str, rows: list[dict],
                           targets: list[list[float]], loss: str, seed: int, tcfg,
                           data: dict, progress: Path):
        """Train the classifier (checkpoints in ``progress``); its predictions and record."""
        from w2s.train import train

        cfg = self.cfg
        source = self.source(name, role)
        model, tok = self._classifier(source, seed)
        self._pad_id = tok.pad_token_id
        texts = [r["text"] for r in rows + data["test"] + data["b"]]
        encode = self._encoder(model, tok, source, texts)
        examples = [{**encode(r), "target": t} for r, t in zip(rows, targets, strict=True)]
        buffer: deque = deque(maxlen=32)

        def loss_fn(m, batch, step):
            logits = _forward(m, batch)
            target = batch["target"].to(logits.device)
            if loss == "logconf":
                # a micro-batch smaller than the buffer takes its quantile over the recent
                # predictions too, so it covers about one buffer's worth of examples
                small = logits.shape[0] < buffer.maxlen
                return logconf_losses(logits, target, step.index, step.total, cfg.aux_alpha,
                                      cfg.warmup_frac, buffer=buffer if small else None)
            if loss == "product":
                return product_losses(logits, target)
            return xent_losses(logits, target)

        result = train(model, examples, loss_fn=loss_fn, collate=_collate(tok.pad_token_id),
                       config=tcfg, checkpoint_dir=progress, accelerator=self.accelerator,
                       description=f"{role} {name} ({loss})",
                       log=lambda rec: self.log({"stage": f"train {role}", "model": name, **rec}))
        self.trained += 1
        out = {"test": self._predict(model, encode, data["test"]),
               "b": self._predict(model, encode, data["b"]),
               "train": {k: v for k, v in result.to_dict().items() if k != "losses"},
               "lr": tcfg.lr}
        out["test_acc"] = _acc(out["test"], data["test"])
        return out, result

    def _classifier(self, source: str, seed: int):
        """(model, tokenizer): a full / LoRA classifier, or (probe) a zero-init linear head."""
        from w2s.models import LoraSettings, load_classifier

        cfg = self.cfg
        lora = LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha) if cfg.mode == "lora" else None
        clf, tok = load_classifier(source, dtype=cfg.dtype, device=self.accelerator.device,
                                   lora=lora, seed=seed)
        tok.truncation_side = "left"  # keep the end of long documents (where the answer is)
        if cfg.mode != "probe":
            return clf, tok
        for p in clf.parameters():
            p.requires_grad_(False)
        head = linear_head(clf.head.in_features, 2, self.accelerator.device)
        # kept beside the head, not as a submodule: frozen, and never in its checkpoints
        object.__setattr__(head, "backbone_for_features", clf)
        return head, tok

    def _encoder(self, model, tok, source: str, texts: list[str]):
        """row -> example: token ids (full/lora), or (probe) the frozen backbone's features,
        computed once for ``texts`` in batches and cached by (model, max_ctx, texts)."""
        cfg = self.cfg
        if cfg.mode != "probe":
            return lambda r: _encode(tok, r["text"], cfg.max_ctx)
        from w2s.models import resolve_model
        from w2s.models.resolve import model_identity

        resolved = resolve_model(source)
        texts = sorted(set(texts))
        with cached_stage(self.cache, "generalize-features", "features",
                          **model_identity(resolved), max_ctx=cfg.max_ctx,
                          texts=content_hash(texts), dtype=self.dtype) as st:
            self.log({"stage": "features", "model": source, "n": len(texts), "cached": st.done})
            if not st.done:
                feats = frozen_features(model.backbone_for_features,
                                        self._batches(tok, texts), self.accelerator.device)
                st.publish(lambda folder: torch.save(feats, folder / "features.pt"),
                           meta={"model": source, "n": len(texts)})
            feats = torch.load(st.path / "features.pt", weights_only=True)
            index = {t: i for i, t in enumerate(texts)}
            return lambda r: {"features": feats[index[r["text"]]]}

    def _batches(self, tok, texts: list[str]):
        """``(input_ids, attention_mask)`` of ``texts``, ``eval_batch_size`` at a time."""
        size = self.cfg.eval_batch_size
        for i in range(0, len(texts), size):
            enc = tok(texts[i:i + size], truncation=True, max_length=self.cfg.max_ctx,
                      padding=True, return_tensors="pt")
            yield enc.input_ids, enc.attention_mask

    @torch.no_grad()
    def _predict(self, model, encode, rows: list[dict]) -> list[float]:
        """p(label = 1) for every row, in order."""
        was = model.training
        model.eval()
        probs: list[float] = []
        pad = getattr(self, "_pad_id", 0)
        for start in range(0, len(rows), self.cfg.eval_batch_size):
            chunk = [encode(r) for r in rows[start:start + self.cfg.eval_batch_size]]
            batch = _collate(pad)([{**c, "target": [0.5, 0.5]} for c in chunk])
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            probs += torch.softmax(_forward(model, batch).float(), -1)[:, 1].tolist()
        model.train(was)
        return probs


# --------------------------------------------------------------------------------------------
# helpers


def _onehot(label: int) -> list[float]:
    return [1.0 - float(label), float(label)]


def _agreement(probs: list[float], targets: list[float]) -> float:
    """Share of rows where two p(label=1) lists give the same hard label."""
    return sum((p > 0.5) == (t > 0.5) for p, t in zip(probs, targets, strict=True)) / len(probs)


def _acc(probs: list[float], rows: list[dict]) -> float:
    return sum((p > 0.5) == bool(r["label"]) for p, r in zip(probs, rows, strict=True)) / len(rows)


def _encode(tok, text: str, max_ctx: int) -> dict:
    ids = tok(text, truncation=True, max_length=max_ctx).input_ids
    return {"input_ids": ids}


def _collate(pad_id: int):
    def collate(items: list[dict]) -> dict:
        out: dict[str, torch.Tensor] = {}
        if "target" in items[0]:  # soft labels [p0, p1]; absent for generative fine-tuning
            out["target"] = torch.tensor([it["target"] for it in items], dtype=torch.float32)
        if "features" in items[0]:
            out["features"] = torch.stack([it["features"] for it in items])
            return out
        ids, mask = pad_right([it["input_ids"] for it in items], pad_id)
        out.update(input_ids=ids, attention_mask=mask)
        return out
    return collate


def _forward(model, batch: dict) -> torch.Tensor:
    if "features" in batch:
        return model(batch["features"].to(model.weight.dtype if hasattr(model, "weight")
                                          else torch.float32))
    return model(batch["input_ids"], batch["attention_mask"])


def _summary(res: dict) -> dict:
    return {"test_acc": res["test_acc"], "cached": res["cached"]}


def _details(res: dict) -> dict:
    return {"test_acc": res["test_acc"], "cached": res["cached"], "cache_key": res["cache_key"],
            "lr": res["lr"], "train": res["train"]}


def _read_json(path: Path) -> Any:
    import json

    return json.loads(Path(path).read_text())


def summarize(results: list[dict], cfg: GeneralizeConfig, run) -> dict:
    """metrics.json: the headline figures (of the one experiment, or medians over a sweep), a
    PGR table per pair (median over seeds), every experiment's details, and a plot."""
    first = results[0]
    metrics: dict[str, Any] = {"task": cfg.task, "loss": cfg.loss, "mode": cfg.mode}
    keys = ("weak_acc", "strong_ceiling_acc", "w2s_acc", "pgr", "pgr_ci_low", "pgr_ci_high",
            "pgr_reason", "pgr_ci_undefined_resamples")
    if len(results) == 1:
        metrics.update({k: first[k] for k in keys})
    else:
        for k in ("weak_acc", "strong_ceiling_acc", "w2s_acc", "pgr"):
            values = [r[k] for r in results if r[k] is not None]
            metrics[k] = statistics.median(values) if values else None
        # a sweep's interval is over its experiments (seeds, pairs): their spread, counted
        # with the experiments where PGR is undefined rather than without them
        pgrs = [r["pgr"] for r in results if r["pgr"] is not None]
        undefined = len(results) - len(pgrs)
        metrics.update(pgr_ci_low=None, pgr_ci_high=None, pgr_ci_undefined_resamples=None,
                       pgr_experiments_low=min(pgrs) if pgrs else None,
                       pgr_experiments_high=max(pgrs) if pgrs else None,
                       pgr_undefined_experiments=undefined,
                       pgr_reason=None if metrics["pgr"] is not None else
                       "undefined in every experiment of the sweep")
    table = []
    for pair in dict.fromkeys("->".join(r["models"]) for r in results):
        rows = [r for r in results if "->".join(r["models"]) == pair]
        pgrs = [r["pgr"] for r in rows if r["pgr"] is not None]
        table.append({"pair": pair, "weak": rows[0]["models"][0], "strong": rows[0]["models"][-1],
                      "seeds": [r["seed"] for r in rows],
                      "median_pgr": statistics.median(pgrs) if pgrs else None,
                      "median_weak_acc": statistics.median(r["weak_acc"] for r in rows),
                      "median_strong_ceiling_acc": statistics.median(
                          r["strong_ceiling_acc"] for r in rows),
                      "median_w2s_acc": statistics.median(r["w2s_acc"] for r in rows),
                      "pgr_per_seed": [r["pgr"] for r in rows],
                      "undefined_seeds": sum(r["pgr"] is None for r in rows)})
    metrics["pgr_table"] = table
    metrics["experiments"] = results
    metrics["trained_models"] = sum(r["trained_models"] for r in results)
    metrics["plot"] = _plot(table, run) if len(table) > 1 or len(results) > 1 else None
    return metrics


def _plot(table: list[dict], run) -> str | None:
    """pgr.png: median PGR per pair (matplotlib is optional: `pip install w2s[plot]`)."""
    from w2s.evaluation.plots import MISSING, pyplot, save_figure

    plt = pyplot()
    if plt is None:
        run.log({"event": "note", "note": MISSING})
        return None
    if not run.main:
        return None
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(table)), 3.5))
    values = [r["median_pgr"] if r["median_pgr"] is not None else 0.0 for r in table]
    ax.bar(range(len(table)), values, color="tab:blue")
    ax.set_xticks(range(len(table)), [r["pair"] for r in table], rotation=30, ha="right",
                  fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("median PGR over seeds")
    ax.set_title("performance gap recovered")
    return save_figure(fig, run.path / "pgr.png").name
