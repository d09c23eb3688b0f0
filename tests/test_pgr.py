"""PGR: the formula, its undefined case, the paired bootstrap CI, and reading predictions."""

import json

import numpy as np
import pytest

from w2s.errors import W2SError
from w2s.evaluation import bootstrap_pgr, pgr, pgr_from_predictions, pgr_with_reason
from w2s.evaluation.pgr import eval_pgr


def test_pgr_hand_values():
    assert pgr(0.5, 0.75, 1.0) == pytest.approx(0.5)
    assert pgr(0.6, 0.6, 0.8) == pytest.approx(0.0)
    assert pgr(0.6, 0.8, 0.8) == pytest.approx(1.0)
    assert pgr(0.6, 0.5, 0.8) == pytest.approx(-0.5)     # worse than the supervisor
    assert pgr(0.6, 0.9, 0.8) == pytest.approx(1.5)      # beats its own ceiling


def test_pgr_undefined_has_reason():
    value, reason = pgr_with_reason(0.8, 0.85, 0.8)
    assert value is None and "does not beat" in reason
    assert pgr(0.9, 0.7, 0.8) is None


def test_pgr_rejects_non_accuracies():
    with pytest.raises(W2SError):
        pgr(1.5, 0.5, 0.9)


def test_bootstrap_point_estimate_and_ci():
    # 10 examples: weak right on 5, w2s on 7, ceiling on 9 -> PGR = (0.7-0.5)/(0.9-0.5) = 0.5
    weak = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    w2s = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    ceil = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    out = bootstrap_pgr(weak, w2s, ceil, n_boot=2000, seed=0)
    assert out["pgr"] == pytest.approx(0.5)
    assert out["n"] == 10
    assert out["ci_low"] < 0.5 < out["ci_high"]
    # same seed, same interval; the interval is within the possible range of this table
    again = bootstrap_pgr(weak, w2s, ceil, n_boot=2000, seed=0)
    assert (again["ci_low"], again["ci_high"]) == (out["ci_low"], out["ci_high"])
    assert -1e-9 <= out["ci_low"] and out["ci_high"] <= 1 + 1e-9


def test_bootstrap_ci_narrows_with_more_data():
    rng = np.random.default_rng(1)
    def width(n):
        w = rng.random(n) < 0.6
        s = rng.random(n) < 0.7
        c = rng.random(n) < 0.8
        r = bootstrap_pgr(w, s, c, n_boot=500, seed=0)
        return r["ci_high"] - r["ci_low"]
    assert width(4000) < width(200)


def test_bootstrap_says_when_its_interval_is_conditional():
    # the gap (ceiling 0.9 vs weak 0.5 on 10 examples) is positive in (almost) every resample
    wide = bootstrap_pgr([1] * 5 + [0] * 5, [1] * 7 + [0] * 3, [1] * 9 + [0], n_boot=2000, seed=0)
    # a gap of 1 example in 10: many resamples have ceiling <= weak, and cannot enter the CI
    weak, ceil = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    thin = bootstrap_pgr(weak, ceil, ceil, n_boot=2000, seed=0)
    assert thin["pgr"] == pytest.approx(1.0)
    assert thin["n_boot_undefined"] > 200 and thin["ci_conditional"] is True
    assert wide["ci_conditional"] is (wide["n_boot_undefined"] > 0)
    assert wide["n_boot_undefined"] < thin["n_boot_undefined"]


def test_bootstrap_undefined_point():
    out = bootstrap_pgr([1, 1, 0], [1, 0, 0], [1, 0, 0])
    assert out["pgr"] is None and out["ci_low"] is None and out["reason"]


def test_bootstrap_length_mismatch():
    with pytest.raises(W2SError, match="differ in length"):
        bootstrap_pgr([1, 0], [1, 0, 1], [1, 1])


def _rows(pair=""):
    table = {"weak": [1, 0, 1, 0], "strong_ceiling": [1, 1, 1, 0], "w2s": [1, 1, 0, 0]}
    rows = []
    for role, correct in table.items():
        for i, c in enumerate(correct):
            rows.append({"id": f"q{i}", "role": role, "correct": bool(c), "pair": pair})
    return rows


def test_from_predictions_groups_pairs():
    res = pgr_from_predictions(_rows("a") + _rows("b"), n_boot=100)
    assert set(res) == {"a", "b"}
    # weak 0.5, ceiling 0.75, w2s 0.5 -> 0
    assert res["a"]["pgr"] == pytest.approx(0.0)


def test_from_predictions_errors():
    rows = [r for r in _rows() if r["role"] != "w2s"]
    with pytest.raises(W2SError, match="lack role"):
        pgr_from_predictions(rows)
    rows = _rows()
    rows[-1]["id"] = "other"
    with pytest.raises(W2SError, match="other example ids"):
        pgr_from_predictions(rows)


def test_eval_pgr_from_run_dir_and_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    assert eval_pgr(run, n_boot=50)[""]["pgr"] == pytest.approx(0.0)
    files = {}
    for role in ("weak", "strong_ceiling", "w2s"):
        f = tmp_path / f"{role}.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in _rows() if r["role"] == role))
        files[role] = str(f)
    out = eval_pgr(None, files["weak"], files["w2s"], files["strong_ceiling"], n_boot=50)[""]
    assert out["pgr"] == pytest.approx(0.0) and out["n"] == 4
    with pytest.raises(W2SError, match="all be accuracies or all be files"):
        eval_pgr(None, "0.5", files["w2s"], "0.9")
    with pytest.raises(W2SError, match="no predictions.jsonl"):
        eval_pgr(tmp_path)
