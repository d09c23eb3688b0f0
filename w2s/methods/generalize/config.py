"""The config of ``w2s generalize`` (torch-free): :class:`GeneralizeConfig`, its validation
and the plan of chains and seeds it asks for."""

from __future__ import annotations

from typing import Any

from w2s.config import comma_list, config_class, option, section, validate
from w2s.data.tinyworld import WorldConfig
from w2s.errors import W2SError
from w2s.methods.sections import Lora, Runtime, Sweep, stage_train

LOSSES = ("xent", "logconf", "product")
MODES = ("full", "lora", "probe")
CHAIN_LABELS = ("in_sample", "kfold", "disjoint")


StageTrain = stage_train(
    "StageTrain", "How one kind of model is fine-tuned (the paper's defaults); ``lr`` none means "
    "the model's registry default.", module=__name__, epochs=2.0, optimizer="adam",
    help={"lr": "peak lr; none = the model's default (5e-5 below 0.7B parameters, 1e-5 above; "
                "1e-3 for a probe)",
          "epochs": "passes over the training half", "optimizer": "adam (the paper), adamw or sgd",
          "scheduler": "cosine to 0 (the paper), linear or constant"})


@config_class
class GeneralizeConfig:
    """``w2s generalize``: weak-to-strong generalization with PGR.

    Inline sections (flags and recipe keys at the top level): ``lora`` (lora_r, lora_alpha),
    ``sweep`` (seeds, launcher, workers), ``runtime`` (device, dtype, seed, run_dir).
    """

    weak: str = option("gpt2", "weak model(s): alias, local dir, hub id or tiny:...; a comma "
                       "list sweeps")
    strong: str = option("gpt2-xl", "strong model(s); a comma list sweeps (pairs with weak "
                         "smaller than strong)")
    chain: str = option("", "bootstrapping chain m1,m2,...,mn of increasing size (replaces "
                        "weak/strong: m1 labels for m2, ..., mn is the strong model)")
    chain_labels: str = option(
        "in_sample", "chain: how a middle link labels the next link's rows: in_sample (it labels "
        "the half-B rows it was trained on, as Burns et al.), kfold (out-of-fold labels from "
        "chain_folds more fits, each on the other folds) or disjoint (each link trains on its own "
        "part of half B and labels the next part; the strong ceiling trains on the last part)",
        choices=list(CHAIN_LABELS))
    chain_folds: int = option(2, "chain_labels kfold: folds of half B", min=2)
    task: str = option("sciq", "binary classification task (`w2s tasks`), local:PATH or "
                       "tinyworld")
    loss: str = option("xent", "the strong student's loss on weak labels", choices=list(LOSSES))
    aux_alpha: float = option(0.5, "logconf: final weight of the student's own hardened labels "
                              "(0.75 for the largest students in the paper)", min=0, max=1)
    warmup_frac: float = option(0.2, "logconf: fraction of steps over which the weight rises "
                                "linearly from 0 to aux_alpha", min=0, max=1)
    mode: str = option("full", "full fine-tune, lora adapters, or linear probe on frozen "
                       "features", choices=list(MODES))
    lora: Lora = section(Lora, "lora: the adapters", inline=True, drop=("lora_targets",))
    n_train: int = option(20000, "training documents (split in halves A and B)", min=2)
    n_test: int = option(10000, "test documents (a warning below 500)", min=2)
    max_ctx: int = option(1024, "tokens per document; longer ones are truncated on the left "
                          "(kept, not dropped)", min=2)
    gen_finetune: bool = option(False, "LM fine-tuning on the task's unlabeled texts before "
                                "classification")
    gen_epochs: float = option(1.0, "gen_finetune: epochs of LM fine-tuning", above=0)
    gen_finetune_models: str = option(
        "strong", "gen_finetune: which models get it: strong (the strong student and the strong "
        "ceiling, as Burns et al.) or all (the weak supervisor and a chain's middle links too)",
        choices=["strong", "all"])
    eval_batch_size: int = option(32, "examples per forward pass when predicting", min=2)
    n_boot: int = option(1000, "bootstrap resamples for the PGR confidence interval (0: none)",
                         min=0)
    sweep: Sweep = section(Sweep, "seeds and how the sweep fans out", inline=True)
    runtime: Runtime = section(Runtime, "device, dtype, seed, run directory", inline=True)
    weak_train: StageTrain = section(StageTrain, "fine-tuning of the weak models")
    strong_train: StageTrain = section(StageTrain, "fine-tuning of the strong models")
    world: WorldConfig = section(WorldConfig, "the tinyworld task and its pretrained tiny models")

    def check(self) -> None:
        """The rules across fields (:func:`w2s.config.validate` runs it after the bounds)."""
        if self.weak_train.mixed_precision != self.strong_train.mixed_precision:
            raise W2SError(f"weak_train.mixed_precision ({self.weak_train.mixed_precision}) and "
                           f"strong_train.mixed_precision ({self.strong_train.mixed_precision}) "
                           "differ; one process runs one precision, so set both the same")


def sweep_jobs(cfg: GeneralizeConfig, plan: dict) -> dict[str, dict]:
    """The sweep as parallel jobs (:func:`w2s.launch.fan_out`): one per (strong model, seed),
    so each strong ceiling is trained by exactly one job."""
    groups: dict[tuple[str, int], list[list[str]]] = {}
    for seed in plan["seeds"]:
        for chain in plan["chains"]:
            groups.setdefault((chain[-1], seed), []).append(chain)
    jobs = {}
    for (strong, seed), chains in groups.items():
        job: dict[str, Any] = {"seeds": [seed], "seed": seed}
        if cfg.chain:
            job["chain"] = ",".join(chains[0])
        else:
            job.update(weak=",".join(dict.fromkeys(c[0] for c in chains)), strong=strong)
        jobs[f"{strong}-seed{seed}"] = job
    return jobs


def plan_experiments(cfg: GeneralizeConfig) -> dict:
    """Validate the config and list the chains to run (a pair is a chain of two).

    Raises a one-line :class:`W2SError` for: anything :func:`w2s.config.validate` refuses (bad
    numbers, choices, precisions that differ), a chain of one model, a weak model larger than the
    strong one, a sweep with no valid pair.
    """
    from w2s.models import resolve_model

    validate(cfg)  # types, choices, bounds (aux_alpha in [0, 1], n_train >= 2, ...), check()
    for stage in (cfg.weak_train, cfg.strong_train):
        stage_train_config(stage, 1e-5, 0)  # bad optimizer, scheduler, sizes: one line here
    seeds = list(dict.fromkeys(cfg.seeds)) if cfg.seeds else [cfg.seed]

    def size(name: str) -> float | None:
        return resolve_model(name).size_b

    notes: list[str] = []
    if cfg.chain_labels != "in_sample" and len(comma_list(cfg.chain)) < 3:
        notes.append(f"chain_labels {cfg.chain_labels} changes nothing here: only a --chain of "
                     "three or more models has a middle link that labels for the next one")
    if cfg.chain:
        chain = comma_list(cfg.chain)
        if len(chain) < 2:
            raise W2SError(f"--chain needs at least two models (weak,...,strong), got "
                           f"{cfg.chain!r}; for one pair use --weak and --strong")
        repeated = sorted({m for m in chain if chain.count(m) > 1})
        if repeated:
            raise W2SError(f"--chain names {', '.join(repeated)} more than once; each link must "
                           "be a larger model than the one before it")
        sizes = [size(m) for m in chain]
        for (a, sa), (b, sb) in zip(zip(chain, sizes, strict=True),
                                    zip(chain[1:], sizes[1:], strict=True), strict=False):
            if sa is not None and sb is not None and sa > sb:
                raise W2SError(f"chain models must grow: {a} ({sa:.3g}B) is larger than the "
                               f"next one, {b} ({sb:.3g}B); order --chain from small to large")
        return {"seeds": seeds, "chains": [chain], "notes": notes}
    weaks, strongs = comma_list(cfg.weak), comma_list(cfg.strong)
    if not weaks or not strongs:
        raise W2SError("give --weak and --strong (or --chain)")
    if len(weaks) == 1 and len(strongs) == 1:
        if weaks[0] == strongs[0]:
            raise W2SError(f"--weak and --strong are both {weaks[0]}; weak-to-strong needs a "
                           "weaker supervisor than its student")
        sw, ss = size(weaks[0]), size(strongs[0])
        if sw is not None and ss is not None and sw > ss:
            raise W2SError(f"the weak model {weaks[0]} ({sw:.3g}B) is larger than the strong "
                           f"model {strongs[0]} ({ss:.3g}B); swap --weak and --strong")
        return {"seeds": seeds, "chains": [[weaks[0], strongs[0]]], "notes": notes}
    chains = []
    for w in weaks:
        for s in strongs:
            sw, ss = size(w), size(s)
            if w != s and (sw is None or ss is None or sw < ss):
                chains.append([w, s])
            else:
                notes.append(f"skipped {w} -> {s}: the weak model is not smaller")
    if not chains:
        raise W2SError(f"no valid pair in --weak {cfg.weak} x --strong {cfg.strong}: every weak "
                       "model must be smaller than its strong model")
    return {"seeds": seeds, "chains": chains, "notes": notes}


def stage_train_config(stage: StageTrain, lr: float, seed: int):
    """The loop's :class:`w2s.train.TrainConfig` for one stage (lr filled in, seed set)."""
    return stage.train_config(seed=seed, default_lr=lr)
