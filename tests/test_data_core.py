"""TaskData, splits, the registry and the synthetic tasks (no files, no hub)."""

import hashlib
import json
import warnings

import pytest

from w2s.data import (
    KINDS,
    TASKS,
    SmallTestSetWarning,
    TaskData,
    as_prompts,
    fingerprint,
    folds,
    halves,
    load_task,
    pooled_split,
    split_rows,
    tasks_table,
)
from w2s.data.splits import permutation, warn_if_small
from w2s.data.synthetic import toy_preference_rows, toy_prompts_rows, toy_sentiment_rows
from w2s.errors import W2SError


def _cls(n=10):
    return [{"id": str(i), "text": f"text {i}", "label": i % 2} for i in range(n)]


# -- TaskData ---------------------------------------------------------------------------------


def test_validate_accepts_each_kind():
    TaskData("c", "classification", _cls()).validate()
    TaskData("p", "preference", [{"id": "a", "prompt": "q", "chosen": "y", "rejected": "n"}]).validate()
    TaskData("g", "prompts", [{"id": "a", "prompt": "q", "reference": None},
                              {"id": "b", "prompt": "q2"}]).validate()


@pytest.mark.parametrize("row, field", [
    ({"id": "7", "text": "x"}, "label"),
    ({"id": "7", "text": "", "label": 0}, "text"),
    ({"id": "7", "text": "x", "label": "1"}, "label"),
    ({"id": "7", "text": "x", "label": True}, "label"),
    ({"id": "7", "text": "x", "label": -1}, "label"),
    ({"id": 7, "text": "x", "label": 0}, "id"),
])
def test_validate_names_task_row_and_field(row, field):
    data = TaskData("mytask", "classification", _cls(3) + [row])
    with pytest.raises(W2SError) as err:
        data.validate()
    msg = str(err.value)
    assert "mytask" in msg and "row 3" in msg and f"'{field}'" in msg and "\n" not in msg


def test_validate_rejects_duplicate_ids_and_bad_reference():
    with pytest.raises(W2SError, match="duplicate id '1'"):
        TaskData("t", "classification", _cls(3) + [{"id": "1", "text": "z", "label": 0}]).validate()
    with pytest.raises(W2SError, match="'reference'"):
        TaskData("t", "prompts", [{"id": "a", "prompt": "q", "reference": 3}]).validate()
    with pytest.raises(W2SError, match="'rejected'"):
        TaskData("t", "preference", [{"id": "a", "prompt": "q", "chosen": "y"}]).validate()


def test_fingerprint_is_content_hash():
    rows = _cls()
    data = TaskData("t", "classification", rows)
    assert data.fingerprint() == fingerprint([dict(r) for r in rows]) and len(data.fingerprint()) == 16
    changed = [dict(r) for r in rows]
    changed[4]["label"] = 1 - changed[4]["label"]
    assert fingerprint(changed) != data.fingerprint()
    canonical = json.dumps(rows, sort_keys=True, separators=(",", ":")).encode()
    assert fingerprint(rows) == hashlib.sha256(canonical).hexdigest()[:16]  # machine-independent


def test_subset_seeded_nested_and_ordered():
    data = TaskData("t", "classification", _cls(100))
    a, b = data.subset(10, seed=1), data.subset(10, seed=1)
    assert a.rows == b.rows and len(a) == 10
    assert [r["id"] for r in a.rows] == sorted((r["id"] for r in a.rows), key=int)  # original order
    assert {r["id"] for r in a.rows} <= {r["id"] for r in data.subset(30, seed=1).rows}
    assert a.rows != data.subset(10, seed=2).rows
    assert len(data.subset(None)) == 100 and len(data.subset(1000)) == 100
    assert a.meta["subset"] == {"n": 10, "seed": 1, "of": 100}


def test_as_prompts_views():
    data = TaskData("t", "classification", [{"id": "1", "text": "one two three four", "label": 1}])
    view = as_prompts(data, prefix_words=2)
    assert view.kind == "prompts"
    assert view.rows == [{"id": "1", "prompt": "one two", "reference": "one two three four",
                          "label": 1}]
    pref = TaskData("t", "preference", [{"id": "1", "prompt": "q", "chosen": "y", "rejected": "n"},
                                        {"id": "2", "prompt": "q", "chosen": "y", "rejected": "m"}])
    assert as_prompts(pref).rows == [{"id": "1", "prompt": "q", "reference": "y"}]


# -- splits -----------------------------------------------------------------------------------


def test_permutation_is_fixed_across_machines():
    assert permutation(10, 0) == permutation(10, 0)
    assert sorted(permutation(1000, 3)) == list(range(1000))
    assert permutation(8, 0) == [3, 7, 5, 4, 2, 6, 0, 1]  # pinned: a hash, not a platform RNG


def test_split_rows_deterministic_disjoint_complete():
    rows = _cls(101)
    parts = split_rows(rows, {"train": 0.8, "test": 0.2}, seed=5)
    assert parts == split_rows(rows, {"train": 0.8, "test": 0.2}, seed=5)
    ids = [[r["id"] for r in p] for p in parts.values()]
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1], key=int) == [r["id"] for r in rows]
    assert len(parts["test"]) == 20 and len(parts["train"]) == 81
    assert parts["train"] != split_rows(rows, {"train": 0.8, "test": 0.2}, seed=6)["train"]


def test_split_rows_counts_then_rest_and_errors():
    parts = split_rows(_cls(50), {"test": 7, "train": 1.0}, seed=0)
    assert len(parts["test"]) == 7 and len(parts["train"]) == 43
    parts = split_rows(_cls(50), {"a": 10, "b": 0.5}, seed=0)
    assert len(parts["a"]) == 10 and len(parts["b"]) == 20
    with pytest.raises(W2SError, match="only 50"):
        split_rows(_cls(50), {"a": 60}, seed=0)
    with pytest.raises(W2SError, match="add up to"):
        split_rows(_cls(50), {"a": 0.7, "b": 0.7}, seed=0)
    with pytest.raises(W2SError, match="fraction"):
        split_rows(_cls(50), {"a": 1.5}, seed=0)


def test_split_rows_group_keeps_inputs_together():
    rows = [{"id": str(i), "prompt": f"p{i % 7}"} for i in range(70)]
    parts = split_rows(rows, {"train": 0.5, "test": 0.5}, seed=0, group="prompt")
    train, test = ({r["prompt"] for r in parts[k]} for k in ("train", "test"))
    assert not train & test and len(parts["train"]) + len(parts["test"]) == 70


def test_halves():
    rows = _cls(11)
    a, b = halves(rows, seed=0)
    assert (len(a), len(b)) == (6, 5) and not {r["id"] for r in a} & {r["id"] for r in b}
    assert halves(rows, seed=0) == (a, b) and halves(rows, seed=1) != (a, b)


def test_folds_cover_every_row_once_and_keep_groups_together():
    rows = list(range(10))
    parts = folds(rows, 3, seed=0)
    assert sorted(len(p) for p in parts) == [3, 3, 4] and sorted(sum(parts, [])) == rows
    assert folds(rows, 3, seed=0) == parts and folds(rows, 3, seed=1) != parts
    # rows sharing a text land in one fold
    texts = ["a", "a", "b", "b", "c", "c", "d", "d"]
    grouped = folds(list(range(8)), 2, seed=0, group=lambda i: texts[i])
    assert [len(p) for p in grouped] == [4, 4]
    assert all({texts[i] for i in p}.isdisjoint({texts[j] for j in q})
               for p, q in [grouped])


def test_pooled_split_draws_test_rows_once_and_train_rows_per_seed():
    train = [{"id": f"t{i}", "text": f"x{i}"} for i in range(30)]
    test = [{"id": f"s{i}", "text": f"y{i}"} for i in range(10)]
    with pytest.warns(SmallTestSetWarning):
        a = pooled_split(train, test, n_train=12, n_test=8, seed=0, group="text")
        b = pooled_split(train, test, n_train=12, n_test=8, seed=1, group="text")
    assert a["test"] == b["test"] and len(a["test"]) == 8  # fixed seed: one test set
    assert len(a["train"]) == 12 and a["train"] != b["train"]
    for parts in (a, b):
        assert not {r["id"] for r in parts["test"]} & {r["id"] for r in parts["train"]}
    # more than there is: the test side takes at most half of the pool, the rest trains
    with pytest.warns(SmallTestSetWarning):
        big = pooled_split(train[:6], [], n_train=100, n_test=100, seed=0)
    assert (len(big["test"]), len(big["train"])) == (3, 3)


def test_warn_if_small():
    with pytest.warns(SmallTestSetWarning, match="200 rows"):
        assert warn_if_small(200) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_small(500) is None


# -- registry ---------------------------------------------------------------------------------


def test_unknown_task_suggests_and_points_to_w2s_tasks():
    with pytest.raises(W2SError) as err:
        load_task("toy-sentimnt")
    assert "did you mean 'toy-sentiment'" in str(err.value) and "w2s tasks" in str(err.value)


def test_unknown_option_and_fixed_option():
    with pytest.raises(W2SError, match="has no option 'sise'; did you mean 'size'"):
        load_task("toy-sentiment", sise=10)
    with pytest.raises(W2SError, match="fixes by='safer'"):
        load_task("pku-saferlhf", by="better")


def test_tasks_table_lists_everything_with_availability():
    rows = tasks_table()
    names = [r["name"] for r in rows]
    for name in ("sciq", "boolq", "cosmos_qa", "amazon_polarity", "anthropic_hh", "hh-helpful",
                 "hh-harmless", "cai", "pku-saferlhf", "pku-saferlhf-helpful", "ultrafeedback",
                 "imdb-prompts", "alpaca_eval", "toy-sentiment", "toy-preference", "toy-prompts",
                 "multiemo", "multiemo-prompts", "strategyqa", "fever", "hhh-alignment"):
        assert name in names and name in TASKS
    by_name = {r["name"]: r for r in rows}
    assert by_name["toy-sentiment"]["offline"] and by_name["toy-sentiment"]["where"] == "in-process"
    assert by_name["sciq"]["hub_id"] == "allenai/sciq"
    assert all(r["kind"] in (*KINDS, "any") for r in rows)
    assert any(n.startswith("local:") for n in names) and any(n.startswith("bigbench:") for n in names)


# -- synthetic --------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [toy_sentiment_rows, toy_preference_rows, toy_prompts_rows])
def test_synthetic_rows_deterministic_and_distinct(make):
    a = make(300, seed=0)
    assert a == make(300, seed=0) and a != make(300, seed=1)
    assert a[:100] == make(100, seed=0)  # a smaller pool is a prefix of a larger one
    assert len({r["id"] for r in a}) == 300


def test_synthetic_tasks_split_and_label_balance():
    train = load_task("toy-sentiment", split="train")
    test = load_task("toy-sentiment", split="test")
    assert (len(train), len(test)) == (2000, 500)
    assert not {r["text"] for r in train.rows} & {r["text"] for r in test.rows}
    assert 0.4 < sum(r["label"] for r in train.rows) / len(train) < 0.6
    assert train.meta["label_names"] == ["negative", "positive"] and train.num_classes == 2
    pos = [r["text"] for r in train.rows if r["label"] == 1][:50]
    assert sum("recommend it to anyone" in t or "Worth" in t or "Five" in t or "come back" in t
               or "treat" in t for t in pos) == 50
    assert load_task("toy-sentiment", n=50, seed=3).fingerprint() == \
        load_task("toy-sentiment", n=50, seed=3).fingerprint()
    # the experiment seed picks the sample, never the pool: no train/test overlap across seeds
    other = load_task("toy-sentiment", split="train", seed=7)
    assert other.rows == train.rows
    assert load_task("toy-sentiment", split="all", data_seed=1).rows != \
        load_task("toy-sentiment", split="all").rows
    pref = load_task("toy-preference", n=20)
    assert pref.kind == "preference" and all(r["chosen"] != r["rejected"] for r in pref.rows)
    prompts = load_task("toy-prompts", split="all", size=600)
    assert len(prompts) == 600 and all(r["reference"] is None for r in prompts.rows)


def test_small_test_split_warns():
    with pytest.warns(SmallTestSetWarning):
        load_task("toy-sentiment", split="test", n=100)


def test_asking_for_more_rows_than_exist_warns_and_uses_all():
    with pytest.warns(UserWarning, match="only 2000 usable rows"):
        assert len(load_task("toy-sentiment", n=5000)) == 2000


def test_sample_rows_numbers_each_prompts_samples():
    from w2s.data.core import sample_rows

    rows = [{"id": "a", "prompt": "p", "x": 1}, {"id": "b", "prompt": "q"}]
    assert sample_rows(rows, 1) == [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q"}]
    assert [r["id"] for r in sample_rows(rows, 2)] == ["a#0", "a#1", "b#0", "b#1"]
