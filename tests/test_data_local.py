"""``local:PATH``: every format, kind inference and ``#kind``, and every error as one line
naming the file, the line and the field."""

import csv
import json

import pytest

from w2s.data import load_task
from w2s.data.local import coerce_label
from w2s.errors import W2SError

CLS = [{"id": f"r{i}", "text": f"review number {i}", "label": i % 2} for i in range(10)]
PREF = [{"prompt": f"question {i}", "chosen": "good", "rejected": "bad"} for i in range(10)]
PROMPTS = [{"prompt": f"Once upon a time {i}", "reference": f"the end {i}"} for i in range(10)]


def write_jsonl(path, rows, extra_lines=()):
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "json-data", "csv", "parquet"])
def test_every_format_reads_the_same_rows(tmp_path, fmt):
    path = tmp_path / f"data.{fmt.split('-')[0]}"
    if fmt == "jsonl":
        write_jsonl(path, CLS)
    elif fmt == "json":
        path.write_text(json.dumps(CLS))
    elif fmt == "json-data":
        path.write_text(json.dumps({"data": CLS}))
    elif fmt == "csv":
        write_csv(path, CLS)  # every cell a string: labels "0"/"1" are coerced
    else:
        write_parquet(path, CLS)
    data = load_task(f"local:{path}", split="all")
    assert data.kind == "classification" and data.rows == CLS
    assert data.meta["source"] == "local" and data.meta["format"] == path.suffix[1:]


def test_kind_inference_and_override(tmp_path):
    assert load_task(f"local:{write_jsonl(tmp_path / 'p.jsonl', PREF)}", split="all").kind == "preference"
    prompts = load_task(f"local:{write_jsonl(tmp_path / 'g.jsonl', PROMPTS)}", split="all")
    assert prompts.kind == "prompts" and prompts.rows[0]["reference"] == "the end 0"
    # a preference file read as prompts: the prompt field is what counts, reference is optional
    as_prompts = load_task(f"local:{tmp_path / 'p.jsonl'}#prompts", split="all")
    assert as_prompts.kind == "prompts" and as_prompts.rows[0]["prompt"] == "question 0"
    with pytest.raises(W2SError, match="unknown kind 'prompt'"):
        load_task(f"local:{tmp_path / 'p.jsonl'}#prompt")
    write_jsonl(tmp_path / "x.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(W2SError, match="cannot tell the kind.*#kind"):
        load_task(f"local:{tmp_path / 'x.jsonl'}")


def test_missing_ids_become_row_indices(tmp_path):
    data = load_task(f"local:{write_jsonl(tmp_path / 'p.jsonl', PREF)}", split="all")
    assert [r["id"] for r in data.rows] == [str(i) for i in range(10)]


@pytest.mark.filterwarnings("ignore::w2s.data.SmallTestSetWarning")
def test_single_file_is_split_80_20_folder_uses_split_files(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(100)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    train = load_task(f"local:{path}")
    test = load_task(f"local:{path}", split="test")
    assert (len(train), len(test)) == (80, 20)
    assert not {r["id"] for r in train.rows} & {r["id"] for r in test.rows}
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows[:30])
    write_csv(folder / "test.csv", rows[30:])
    assert len(load_task(f"local:{folder}")) == 30
    assert len(load_task(f"local:{folder}", split="test")) == 70
    with pytest.raises(W2SError, match="no validation.jsonl"):
        load_task(f"local:{folder}", split="validation")


def _error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(W2SError) as err:
        load_task(f"local:{path}", split="all")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_bad_json_line(tmp_path):
    msg = _error(tmp_path, "d.jsonl", json.dumps(CLS[0]) + "\n{not json}\n")
    assert "line 2" in msg and "not valid JSON" in msg


def test_missing_and_empty_fields_name_line_and_field(tmp_path):
    rows = [json.dumps(r) for r in CLS[:3]] + ['{"id": "x", "label": 1}']
    msg = _error(tmp_path, "d.jsonl", "\n".join(rows) + "\n")
    assert "line 4" in msg and "missing field 'text'" in msg
    rows = [json.dumps(r) for r in PREF[:2]] + ['{"prompt": "q", "chosen": "", "rejected": "n"}']
    msg = _error(tmp_path, "p.jsonl", "\n".join(rows))
    assert "line 3" in msg and "field 'chosen' is empty" in msg
    msg = _error(tmp_path, "c.csv", "text,label\nfine,1\n,0\n")
    assert "line 3" in msg and "'text'" in msg
    msg = _error(tmp_path, "l.json", json.dumps([CLS[0], {"text": "t"}, {"text": "u", "label": 0}]))
    assert "record 2" in msg and "missing field 'label'" in msg


def test_bad_labels(tmp_path):
    msg = _error(tmp_path, "d.jsonl", json.dumps(CLS[0]) + "\n" +
                 json.dumps({"text": "t", "label": "positive"}) + "\n")
    assert "line 2" in msg and "field 'label'" in msg and "'positive'" in msg
    msg = _error(tmp_path, "f.jsonl", json.dumps({"text": "t", "label": 0.5}) + "\n")
    assert "line 1" in msg and "field 'label'" in msg


def test_label_coercion_rules():
    assert [coerce_label(v) for v in (0, 1, 3, True, False, 1.0, "1", " 2 ")] == [0, 1, 3, 1, 0, 1, 1, 2]
    assert [coerce_label(v) for v in (-1, 0.5, "yes", "1.0", "-1", None, [1])] == [None] * 7


def test_duplicate_ids(tmp_path):
    rows = CLS[:3] + [dict(CLS[1], text="another")]
    msg = _error(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows))
    assert "line 4" in msg and "duplicate id 'r1'" in msg and "line 2" in msg and "'id'" in msg


def test_not_an_object_and_bad_containers(tmp_path):
    msg = _error(tmp_path, "d.jsonl", json.dumps(CLS[0]) + "\n[1, 2]\n")
    assert "line 2" in msg and "not an object" in msg
    msg = _error(tmp_path, "d.json", json.dumps({"rows": CLS}))
    assert "list of objects" in msg
    assert "no rows" in _error(tmp_path, "e.jsonl", "\n\n")
    assert "unsupported file type" in _error(tmp_path, "d.txt", "hello")


def test_missing_file(tmp_path):
    with pytest.raises(W2SError, match="no such file") as err:
        load_task(f"local:{tmp_path / 'nope.jsonl'}")
    assert "nope.jsonl" in str(err.value)
    with pytest.raises(W2SError, match="needs a path"):
        load_task("local:")


def test_a_folders_meta_json_carries_its_prompt_format_and_nothing_else(tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"\n\nHuman: q{i}\n\nAssistant:", "chosen": "a",
             "rejected": "b"} for i in range(3)]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_task(f"local:{tmp_path}", split="test").meta["prompt_format"] == "plain"
    (tmp_path / "meta.json").write_text(json.dumps({"prompt_format": "hh"}))
    data = load_task(f"local:{tmp_path}", split="train")
    assert data.meta["prompt_format"] == "hh" and [r["id"] for r in data.rows] == ["r0", "r1", "r2"]
    (tmp_path / "meta.json").write_text(json.dumps({"prompt_format": "hh", "labels": 3}))
    with pytest.raises(W2SError, match="meta.json may hold only prompt_format"):
        load_task(f"local:{tmp_path}", split="train")
    (tmp_path / "meta.json").write_text("{")
    with pytest.raises(W2SError, match="not valid JSON"):
        load_task(f"local:{tmp_path}", split="train")
