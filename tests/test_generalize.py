"""``w2s generalize`` end to end on tiny models: metrics, PGR recomputed from predictions, cache
reuse in sweeps, resume after an interrupted training, bootstrapping chains, bad input, recipes.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
from helpers import cli, fan_out, in_one_process, read_jsonl

from w2s.cli import main
from w2s.config import build_config
from w2s.methods.generalize import config as generalize
from w2s.methods.generalize.config import GeneralizeConfig, StageTrain, plan_experiments

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "generalize"

TINY = ["--weak", "tiny:llama-1x32", "--strong", "tiny:llama-2x32", "--task", "tinyworld",
        "--entities", "120", "--pretrain-steps", "10", "--n-train", "64", "--n-test", "24",
        "--weak-train-max-steps", "2", "--strong-train-max-steps", "2",
        "--weak-train-batch-size", "16", "--strong-train-batch-size", "16",
        "--weak-train-micro-batch-size", "16", "--strong-train-micro-batch-size", "16",
        "--weak-train-lr", "1e-3", "--strong-train-lr", "1e-3", "--n-boot", "200",
        "--max-ctx", "32"]


def test_pipeline_metrics_and_eval_pgr(tmp_path, cache_dir, capsys):
    run_dir = tmp_path / "run"
    assert cli(["generalize", *TINY, "--loss", "logconf", "--run-dir", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("weak_acc", "strong_ceiling_acc", "w2s_acc", "pgr", "pgr_ci_low", "pgr_ci_high",
                "pgr_reason", "pgr_table", "experiments"):
        assert key in metrics
    assert metrics["method"] == "generalize" and metrics["status"] == "ok"
    assert metrics["trained_models"] == 3
    stages = metrics["experiments"][0]["stages"]
    assert set(stages) == {"weak", "strong_ceiling", "w2s"}
    for name in ("config.yaml", "env.json", "log.jsonl", "predictions.jsonl"):
        assert (run_dir / name).is_file()
    env = json.loads((run_dir / "env.json").read_text())
    assert env["seeds"] == [0] and env["data"]["0"]["test"]
    rows = read_jsonl(run_dir / "predictions.jsonl")
    assert {r["role"] for r in rows} == {"weak", "strong_ceiling", "w2s"}
    assert set(rows[0]) >= {"id", "role", "pair", "label", "prob", "correct"}
    assert len(rows) == 3 * 24
    # the tinyworld models were pretrained through the loop and logged
    assert [r["model"] for r in read_jsonl(run_dir / "log.jsonl")
            if r.get("stage") == "pretrain"] == ["tiny:llama-1x32", "tiny:llama-2x32"]
    # the command ends by printing its figures and where the run is
    out = capsys.readouterr().out
    assert "w2s generalize: ok" in out and f"run: {run_dir}" in out
    assert f"{metrics['weak_acc']:.4g}" in out
    # `w2s eval pgr RUN_DIR` recomputes the same figures from predictions.jsonl
    assert cli(["eval", "pgr", str(run_dir), "--n-boot", "200", "--json"]) == 0
    (recomputed,) = json.loads(capsys.readouterr().out).values()
    assert recomputed["pgr"] == metrics["pgr"]
    assert recomputed["weak_acc"] == metrics["weak_acc"]
    assert recomputed["ci_low"] == metrics["pgr_ci_low"]
    assert recomputed["ci_high"] == metrics["pgr_ci_high"]
    if metrics["pgr"] is None:
        assert "does not beat" in metrics["pgr_reason"]


def test_sweep_trains_each_ceiling_once_and_reuses_the_cache(tmp_path, cache_dir):
    sweep = [*TINY, "--task", "toy-sentiment", "--strong", "tiny:llama-2x32,tiny:llama-1x64",
             "--weak", "tiny:llama-1x32,tiny:llama-2x32", "--seeds", "0,1"]
    first = tmp_path / "first"
    assert cli(["generalize", *sweep, "--run-dir", str(first)]) == 0
    metrics = json.loads((first / "metrics.json").read_text())
    pairs = [row["pair"] for row in metrics["pgr_table"]]
    # valid pairs only (weak smaller than strong): 1x32->2x32, 1x32->1x64 (2x32 is not < 1x64
    # or 2x32 itself is skipped with a note)
    assert "tiny:llama-1x32->tiny:llama-2x32" in pairs
    assert all(len(row["pgr_per_seed"]) == 2 for row in metrics["pgr_table"])
    # undefined experiments are counted, not dropped silently; the spread covers the defined ones
    pgrs = [e["pgr"] for e in metrics["experiments"]]
    assert metrics["pgr_undefined_experiments"] == sum(p is None for p in pgrs)
    assert all(row["undefined_seeds"] == sum(p is None for p in row["pgr_per_seed"])
               for row in metrics["pgr_table"])
    defined = [p for p in pgrs if p is not None]
    assert (metrics["pgr_experiments_low"], metrics["pgr_experiments_high"]) == (
        (min(defined), max(defined)) if defined else (None, None))
    n_pairs = len({(e["models"][0], e["models"][1]) for e in metrics["experiments"]})
    weak_models = len({e["models"][0] for e in metrics["experiments"]})
    strong_models = len({e["models"][1] for e in metrics["experiments"]})
    # per seed: one weak ceiling per weak model, one strong ceiling per strong model, one w2s
    # model per pair -- shared ceilings are trained once
    assert metrics["trained_models"] == 2 * (weak_models + strong_models + n_pairs)
    assert any(r.get("note", "").startswith("skipped") for r in read_jsonl(first / "log.jsonl"))
    if metrics["plot"]:
        assert (first / metrics["plot"]).is_file()
    # a second run of the same sweep trains nothing: every fit comes from the cache
    second = tmp_path / "second"
    assert cli(["generalize", *sweep, "--run-dir", str(second)]) == 0
    again = json.loads((second / "metrics.json").read_text())
    assert again["trained_models"] == 0
    fits = [r for r in read_jsonl(second / "log.jsonl") if r.get("stage") == "fit"]
    assert fits and all(r["cached"] for r in fits)
    assert [row["median_pgr"] for row in again["pgr_table"]] == [
        row["median_pgr"] for row in metrics["pgr_table"]]


def test_interrupted_strong_training_resumes_from_its_checkpoint(tmp_path, cache_dir,
                                                                 monkeypatch):
    from w2s.methods.generalize import experiment as generalize_core

    real = generalize_core.logconf_losses
    fired = {"done": False}

    def crashing(logits, target, step, *args, **kwargs):
        if step >= 3 and not fired["done"]:  # after the epoch-1 checkpoint (step 2 of 4)
            fired["done"] = True
            raise RuntimeError("simulated crash during strong training")
        return real(logits, target, step, *args, **kwargs)

    monkeypatch.setattr(generalize_core, "logconf_losses", crashing)
    args = ["generalize", *TINY, "--task", "toy-sentiment", "--loss", "logconf",
            "--strong-train-max-steps", "none", "--strong-train-epochs", "2",
            "--run-dir", str(tmp_path / "run")]
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(args)
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert cli(args) == 0
    fitted = [r for r in read_jsonl(tmp_path / "run" / "log.jsonl")
              if r.get("stage") == "fitted"]
    w2s = [r for r in fitted if r["loss"] == "logconf"]
    assert w2s and w2s[-1]["resumed_from"] == 2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["experiments"][0]["stages"]["w2s"]["train"]["steps"] == 4
    # the weak ceiling came from the cache; the w2s model resumed; the strong ceiling (next in
    # line when the crash came) trained now
    assert metrics["trained_models"] == 2


def test_chain_records_every_link(tmp_path, cache_dir):
    run_dir = tmp_path / "chain"
    chain = "tiny:llama-1x32,tiny:llama-1x64,tiny:llama-2x64"
    assert cli(["generalize", *TINY, "--task", "toy-sentiment", "--chain", chain,
                "--run-dir", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    links = metrics["experiments"][0]["chain"]
    assert [link["model"] for link in links] == chain.split(",")
    assert all(0.0 <= link["test_acc"] <= 1.0 for link in links)
    assert metrics["weak_acc"] == links[0]["test_acc"]
    assert metrics["w2s_acc"] == links[-1]["test_acc"]
    # every model's test predictions, the middle link's too, and the labels each link gave
    rows = [json.loads(x) for x in (run_dir / "predictions.jsonl").read_text().splitlines()]
    roles = {r["role"]: [] for r in rows}
    for r in rows:
        roles[r["role"]].append(r)
    assert set(roles) == {"weak", "intermediate_2", "strong_ceiling", "w2s"}
    middle = roles["intermediate_2"]
    assert sum(r["correct"] for r in middle) / len(middle) == pytest.approx(links[1]["test_acc"])
    labels = [json.loads(x) for x in (run_dir / "weak_labels.jsonl").read_text().splitlines()]
    by_labeller = {}
    for r in labels:
        by_labeller.setdefault((r["labeller"], r["learner"]), []).append(r)
    models = chain.split(",")
    assert list(by_labeller) == [(models[0], models[1]), (models[1], models[2])]
    for k, link in enumerate(links[1:]):
        given = by_labeller[(models[k], models[k + 1])]
        assert sum(r["correct"] for r in given) / len(given) == pytest.approx(
            link["label_acc_on_b"])


def _chain_run(tmp_path, name: str, *extra: str):
    run_dir = tmp_path / name
    chain = "tiny:llama-1x32,tiny:llama-1x64,tiny:llama-2x64"
    assert cli(["generalize", *TINY, "--task", "toy-sentiment", "--chain", chain,
                "--run-dir", str(run_dir), *extra]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    labels = {}
    for r in read_jsonl(run_dir / "weak_labels.jsonl"):
        labels.setdefault((r["labeller"], r["learner"]), []).append(r)
    fits = [r for r in read_jsonl(run_dir / "log.jsonl") if r.get("stage") == "fit"]
    return chain.split(","), metrics["experiments"][0]["chain"], labels, fits


def test_chain_in_sample_links_pass_on_their_own_predictions(tmp_path, cache_dir):
    models, links, labels, _ = _chain_run(tmp_path, "in-sample")
    middle = links[1]
    # the middle link labels the rows it was trained on: what it passes on is what it reproduces
    assert middle["passed_label_agreement"] == middle["own_label_agreement"]
    given = [r["prob"] for r in labels[(models[0], models[1])]]
    passed = [r["prob"] for r in labels[(models[1], models[2])]]
    agree = sum((p > 0.5) == (q > 0.5) for p, q in zip(passed, given, strict=True)) / len(given)
    assert middle["own_label_agreement"] == pytest.approx(agree)
    assert "own_label_agreement" in links[2] and "passed_label_agreement" not in links[2]


def test_chain_kfold_passes_out_of_fold_labels(tmp_path, cache_dir):
    from w2s.runs import Cache

    models, links, labels, fits = _chain_run(tmp_path, "kfold", "--chain-labels", "kfold",
                                             "--chain-folds", "2")
    n_b = len(labels[(models[0], models[1])])
    middle = [f for f in fits if f["model"] == models[1]]
    full = [f for f in middle if f["n_train"] == n_b]
    fold_fits = [f for f in middle if f["n_train"] < n_b]
    assert len(full) == 1 and len(fold_fits) == 2
    assert sum(n_b - f["n_train"] for f in fold_fits) == n_b  # the held-out folds cover B once
    preds = [json.loads((Cache().path(f["cache_key"]) / "result.json").read_text())["b"]
             for f in fold_fits]
    passed = [r["prob"] for r in labels[(models[1], models[2])]]
    # every label the last learner gets comes from the fold fit that did not train on that row
    source = [[k for k, p in enumerate(preds) if p[i] == pytest.approx(passed[i], abs=1e-9)]
              for i in range(n_b)]
    assert all(len(s) >= 1 for s in source)
    held = [sum(1 for s in source if s == [k]) for k in range(2)]
    assert held == [n_b - f["n_train"] for f in fold_fits]
    assert 0.0 <= links[1]["passed_label_agreement"] <= 1.0


def test_chain_disjoint_gives_each_learner_its_own_part(tmp_path, cache_dir):
    models, links, labels, fits = _chain_run(tmp_path, "disjoint", "--chain-labels", "disjoint")
    first = {r["id"] for r in labels[(models[0], models[1])]}
    second = {r["id"] for r in labels[(models[1], models[2])]}
    assert first and second and not first & second  # the next part, not the rows it learnt
    assert "part 1 of 2" in links[1]["trained_on"] and "part 2 of 2" in links[2]["trained_on"]
    # the student and the strong ceiling train on the same last part
    assert [f["n_train"] for f in fits if f["model"] == models[2]] == [len(second)] * 2


def test_probe_mode_caches_features(tmp_path, cache_dir):
    run_dir = tmp_path / "probe"
    assert cli(["generalize", *TINY, "--task", "toy-sentiment", "--mode", "probe",
                "--run-dir", str(run_dir)]) == 0
    feats = [r for r in read_jsonl(run_dir / "log.jsonl") if r.get("stage") == "features"]
    assert [r["cached"] for r in feats] == [False, False, True]  # strong features reused


def _local(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"local:{path}"


def _no_hidden_states(monkeypatch):
    import w2s.models

    real = w2s.models.load_classifier

    class NoHidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            return (self.inner(**kwargs).last_hidden_state,)  # a tuple: no last_hidden_state

    def load(*args, **kwargs):
        clf, tok = real(*args, **kwargs)
        clf.backbone = NoHidden(clf.backbone)
        return clf, tok

    monkeypatch.setattr(w2s.models, "load_classifier", load)


@pytest.mark.parametrize("case", ["one-class", "missing-label", "weak-larger", "chain-of-one",
                                  "probe-no-hidden", "weak-is-strong", "chain-repeats"])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tmp_path, cache_dir, capsys,
                                                         monkeypatch):
    run_dir = tmp_path / "run"
    args = [*TINY, "--task", "toy-sentiment", "--run-dir", str(run_dir)]
    expect = {"one-class": "one class", "missing-label": "label", "weak-larger": "larger",
              "chain-of-one": "at least two", "probe-no-hidden": "no hidden states",
              "weak-is-strong": "both tiny:llama-1x32",
              "chain-repeats": "more than once"}[case]
    if case == "one-class":
        args += ["--task", _local(tmp_path, [{"id": str(i), "text": f"t {i}", "label": 0}
                                             for i in range(30)])]
    elif case == "missing-label":
        rows = [{"id": str(i), "text": f"t {i}", "label": i % 2} for i in range(30)]
        del rows[7]["label"]
        args += ["--task", _local(tmp_path, rows)]
    elif case == "weak-larger":
        args += ["--weak", "tiny:llama-2x64", "--strong", "tiny:llama-1x32"]
    elif case == "chain-of-one":
        args += ["--chain", "tiny:llama-1x32"]
    elif case == "chain-repeats":
        args += ["--chain", "tiny:llama-1x32,tiny:llama-1x32,tiny:llama-2x64"]
    elif case == "weak-is-strong":
        args += ["--weak", "tiny:llama-1x32", "--strong", "tiny:llama-1x32"]
    else:
        _no_hidden_states(monkeypatch)
        args += ["--mode", "probe"]
    command = "w2s-generalize" if case == "weak-larger" else "generalize"
    with warnings.catch_warnings(record=True) as caught:  # bad data: the error, no warnings
        warnings.simplefilter("always")
        assert cli([command, *args]) == 2
    if case in ("one-class", "missing-label"):
        assert [str(w.message) for w in caught if "rows" in str(w.message)] == []
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and expect in err
    assert not run_dir.exists()


def test_stage_settings_are_train_config_fields():
    from w2s.train import TrainConfig

    loop_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {f.name for f in dataclasses.fields(StageTrain)} <= loop_fields
    defaults = generalize.stage_train_config(StageTrain(), lr=5e-5, seed=3)
    assert (defaults.lr, defaults.epochs, defaults.batch_size, defaults.scheduler,
            defaults.optimizer, defaults.seed) == (5e-5, 2.0, 32, "cosine", "adam", 3)


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_parse_and_resolve(recipe):
    cfg = build_config(GeneralizeConfig, recipe)
    plan = plan_experiments(cfg)
    assert plan["chains"] and plan["seeds"]


@pytest.mark.parametrize("which, tuned", [("strong", ["tiny:llama-2x32"]),
                                          ("all", ["tiny:llama-1x32", "tiny:llama-2x32"])])
def test_generative_finetuning_runs_before_classification(tmp_path, cache_dir, which, tuned):
    """Burns et al. fine-tune the strong model generatively (the default); `all` adds the weak
    supervisor."""
    run_dir = tmp_path / "gen"
    assert cli(["generalize", *TINY, "--task", "toy-sentiment", "--gen-finetune",
                "--gen-epochs", "0.25", "--gen-finetune-models", which,
                "--run-dir", str(run_dir)]) == 0
    done = [r for r in read_jsonl(run_dir / "log.jsonl")
            if r.get("stage") == "gen_finetune" and "model" in r]
    assert [r["model"] for r in done] == tuned
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "ok"


def test_logconf_sees_the_loops_optimizer_step(tmp_path):
    """logconf's warm-up reads the step the loop passes to the loss (no clock of its own)."""
    import torch

    from w2s.train import TrainConfig, train

    # 10 examples, batch 8 in micro-batches of 4: step 0 has 8 examples (2 calls), step 1 the
    # last 2 (1 call); two epochs -> steps 0..3
    seen = []

    def loss_fn(model, batch, step):
        seen.append((step.index, step.total))
        return (model(batch) ** 2).mean(-1)

    torch.manual_seed(0)
    train(torch.nn.Linear(2, 2), [torch.randn(2) for _ in range(10)], loss_fn=loss_fn,
          collate=torch.stack, config=TrainConfig(batch_size=8, micro_batch_size=4, epochs=2),
          progress=False)
    assert {total for _, total in seen} == {4}
    assert [index for index, _ in seen] == [0, 0, 1, 2, 2, 3]


def test_tinyworld_task_keeps_entities_apart():
    from w2s.data import load_task
    from w2s.data.tinyworld import WorldConfig, corpus

    train = load_task("tinyworld", split="train", entities=200)
    test = load_task("tinyworld", split="test", entities=200)
    assert len(train) == 160 and len(test) == 40
    assert not {r["text"] for r in train} & {r["text"] for r in test}
    assert {r["label"] for r in train} == {0, 1}
    assert train.rows[0]["text"].endswith(" is ")
    sentences = corpus(WorldConfig(entities=200))
    assert len(sentences) == 150 + 50 * 4  # famous facts (every 4th) appear 4 times
    assert sentences[0]["text"].startswith(sentences[0]["prompt"])


def test_tinyworld_pretraining_runs_under_a_mixed_precision_run(tmp_path):
    """A process runs ONE accelerate precision: a bf16 generalize run (its accelerator made
    first) must still pretrain its tiny models, in bf16, cached apart from fp32 ones. In a
    subprocess: the precision of this test process must stay "no"."""
    import os
    import subprocess
    import sys

    script = """
import json
from w2s.data.tinyworld import WorldConfig
from w2s.tiny.world import pretrained_tiny
from w2s.train import TrainConfig, make_accelerator
world = WorldConfig(entities=40, pretrain_steps=2, pretrain_batch=8)
make_accelerator(TrainConfig(mixed_precision="bf16"))
print(json.dumps(str(pretrained_tiny("tiny:llama-1x32", world))))
"""
    env = {**os.environ, "W2S_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    bf16 = json.loads(done.stdout.strip().splitlines()[-1])
    assert "tinyworld-pretrain" in bf16
    fp32 = subprocess.run([sys.executable, "-c", script.replace(
        'make_accelerator(TrainConfig(mixed_precision="bf16"))', "")], env=env,
        capture_output=True, text=True, timeout=300)
    assert fp32.returncode == 0, fp32.stderr[-2000:]
    assert json.loads(fp32.stdout.strip().splitlines()[-1]) != bf16  # cached apart


def test_sweep_fans_out_over_worker_processes(tmp_path, cache_dir):
    """--launcher local --workers 2: one job per (strong, seed), run as two processes sharing the
    cache; the parent's pass then trains nothing and reports what a one-process sweep reports."""
    sweep = [*TINY, "--task", "toy-sentiment", "--weak", "tiny:llama-1x32",
             "--strong", "tiny:llama-2x32,tiny:llama-1x64", "--seeds", "0"]
    fanned, jobs = tmp_path / "fanned", ["tiny_llama-1x64-seed0", "tiny_llama-2x32-seed0"]
    metrics = fan_out("generalize", sweep, fanned, jobs)
    for job in jobs:
        assert json.loads((fanned / "jobs" / job / "metrics.json").read_text())["status"] == "ok"
    started = [r for r in read_jsonl(fanned / "log.jsonl") if r.get("event") == "job started"]
    assert len(started) == 2
    # the same sweep in one process, on a fresh cache, gives the same figures
    ref = in_one_process("generalize", sweep, tmp_path / "alone", cache_dir)
    assert [(r["pair"], r["median_pgr"], r["median_w2s_acc"]) for r in metrics["pgr_table"]] == [
        (r["pair"], r["median_pgr"], r["median_w2s_acc"]) for r in ref["pgr_table"]]


def test_a_failed_sweep_job_is_one_line(tmp_path, cache_dir, capsys, monkeypatch):
    sweep = [*TINY, "--task", "toy-sentiment", "--weak", "tiny:llama-1x32",
             "--strong", "tiny:llama-2x32,tiny:llama-1x64", "--seeds", "0"]
    monkeypatch.setenv("W2S_CACHE", str(tmp_path / "not-a-dir"))
    (tmp_path / "not-a-dir").write_text("a file where the jobs expect the cache folder")
    code = cli(["generalize", *sweep, "--launcher", "local", "--workers", "2",
                "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code != 0 and "sweep job" in err and "failed" in err
    assert not (tmp_path / "run" / "metrics.json").exists()
    # the job's log the message points at is still there to read (a failed job is not bad
    # input: the sweep's run directory stays)
    log = Path(err.rsplit("its log is ", 1)[1].split()[0])
    assert log.is_file() and log.stat().st_size > 0


class _Keyed(Exception):
    """Raised by a patched Cache.key: carries the parts a cache key was made from."""


def _key_parts(monkeypatch, call):
    from w2s.runs import Cache

    def key(self, kind, **parts):
        raise _Keyed(parts)

    monkeypatch.setattr(Cache, "key", key)
    with pytest.raises(_Keyed) as caught:
        call()
    monkeypatch.undo()
    return caught.value.args[0]


def _save_tiny(folder, seed):
    from w2s.models import build_tiny, tiny_tokenizer

    build_tiny("llama-1x32", seed=seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)


def test_cache_key_changes_when_a_local_model_folder_is_rewritten(tmp_path, cache_dir,
                                                                  monkeypatch):
    """A model given as a folder is identified by its files, not only by its path: training
    another model into the same folder must not reuse the old model's cached results."""
    from w2s.methods.generalize.experiment import Experiment

    folder = tmp_path / "my-model"
    cfg = build_config(GeneralizeConfig, overrides={"weak": str(folder), "task": "toy-sentiment"})
    rows = [{"id": "1", "text": "good", "label": 1}, {"id": "2", "text": "bad", "label": 0}]
    data = {"fingerprints": {"test": "t", "b": "b"}}
    keys = []
    for seed in (0, 1):
        _save_tiny(folder, seed)
        fit = Experiment(cfg).fit
        keys.append(_key_parts(monkeypatch, lambda fit=fit: fit(
            str(folder), "weak", rows, [[0.0, 1.0], [1.0, 0.0]], "xent", 0, data))["model"])
    assert keys[0] != keys[1]


def test_cache_key_depends_on_the_weights_dtype(cache_dir, monkeypatch):
    """bf16 and fp32 training give different models: one must not reuse the other's results."""
    from w2s.methods.generalize.experiment import Experiment

    rows = [{"id": "1", "text": "good", "label": 1}, {"id": "2", "text": "bad", "label": 0}]
    data = {"fingerprints": {"test": "t", "b": "b"}}
    keys = []
    for dtype in ("fp32", "bf16"):
        cfg = build_config(GeneralizeConfig, overrides={"weak": "tiny:llama-1x32",
                                                        "task": "toy-sentiment", "dtype": dtype})
        fit = Experiment(cfg).fit
        keys.append(_key_parts(monkeypatch, lambda fit=fit: fit(
            "tiny:llama-1x32", "weak", rows, [[0.0, 1.0], [1.0, 0.0]], "xent", 0, data)))
    assert keys[0] != keys[1]


def test_a_text_never_lands_in_both_halves(tmp_path, cache_dir):
    from w2s.methods.generalize.experiment import Experiment

    rows = [{"id": str(i), "text": f"review {i % 10}", "label": (i % 10) % 2} for i in range(60)]
    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = build_config(GeneralizeConfig, overrides={"task": f"local:{path}", "n_train": 48,
                                                    "n_test": 12})
    with pytest.warns(UserWarning):
        data = Experiment(cfg).load_data(0)
    texts_a, texts_b = {r["text"] for r in data["a"]}, {r["text"] for r in data["b"]}
    assert texts_a and texts_b and not texts_a & texts_b
