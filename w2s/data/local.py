"""``local:PATH[#kind]``: your own data from a file or a folder.

Formats (by suffix): ``.jsonl`` (one object a line), ``.json`` (a list of objects, or
``{"data": [...]}``), ``.parquet``, ``.csv`` (a header row). A folder holds one file per split,
``train.<ext>`` and ``test.<ext>`` (and optionally ``meta.json``, e.g. ``{"prompt_format":
"hh"}`` for Anthropic-HH transcripts); a single file is split 80/20 with a fixed seed
(``split="all"`` keeps every row).

The kind comes from the fields present: ``chosen`` + ``rejected`` -> preference, ``label`` ->
classification, ``prompt`` -> prompts. Override with ``#kind``: ``local:data.jsonl#prompts``.
A row without ``id`` (or with an empty one) gets its 0-based row index as id.

Labels: integers; also ``true``/``false`` (1/0), integral floats (``1.0``, as pandas writes
them) and digit strings (``"1"``: every CSV cell is a string). Anything else (``"yes"``,
``"positive"``, ``0.5``, negative numbers) is refused: map names to class numbers yourself so the
class order is yours, not a guess.

Every problem is ONE :class:`~w2s.errors.W2SError` naming the file, the line (jsonl, csv, json
decode errors; 1-based) or record (json list, parquet; 1-based) and the field.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from w2s.data.core import KIND_FIELDS, KINDS, TaskData, row_problem
from w2s.errors import W2SError
from w2s.runs import file_hash

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")


def load_local(spec: str, *, split: str = "train", n: int | None = None, seed: int = 0) -> TaskData:
    """Load ``PATH[#kind]`` (the part after ``local:``); see the module docstring."""
    from w2s.data.registry import split_in_memory

    path, kind = parse_spec(spec)
    if path.is_dir():
        data = read_local(_split_file(path, split), kind, name=f"local:{spec}")
        data.meta["split"] = split
        data.meta.update(_folder_meta(path))
        return data.subset(n, seed)
    return split_in_memory(read_local(path, kind, name=f"local:{spec}"), split, n, seed)


def parse_spec(spec: str) -> tuple[Path, str | None]:
    """``"data.jsonl#prompts"`` -> (Path("data.jsonl"), "prompts"); no ``#kind`` -> kind None."""
    text, kind = spec, None
    if "#" in spec:
        head, tail = spec.rsplit("#", 1)
        if tail in KINDS:
            text, kind = head, tail
        elif not Path(spec).expanduser().exists():
            raise W2SError(f"local:{spec}: unknown kind '{tail}' after '#'; use one of "
                           f"{', '.join(KINDS)}")
    if not text:
        raise W2SError("local: needs a path, e.g. local:data/train.jsonl")
    path = Path(text).expanduser()
    if not path.exists():
        raise W2SError(f"local:{spec}: no such file or folder {path}; check the path")
    return path, kind


FOLDER_META = ("prompt_format",)
"""What a folder's ``meta.json`` may say about its data: ``prompt_format`` (``hh`` for
Anthropic-HH transcripts, read as they are; default ``plain``)."""


def _folder_meta(folder: Path) -> dict[str, Any]:
    """A folder's ``meta.json`` (only :data:`FOLDER_META` keys), or nothing."""
    path = folder / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise W2SError(f"{path}: not valid JSON ({e.msg}); fix it or remove it") from None
    unknown = sorted(set(meta) - set(FOLDER_META)) if isinstance(meta, dict) else None
    if unknown is None or unknown:
        raise W2SError(f"{path}: a data folder's meta.json may hold only "
                       f"{', '.join(FOLDER_META)}; got {unknown if unknown else meta!r}")
    return meta


def _split_file(folder: Path, split: str) -> Path:
    for ext in EXTENSIONS:
        if (folder / f"{split}{ext}").is_file():
            return folder / f"{split}{ext}"
    have = sorted(p.name for p in folder.iterdir() if p.suffix in EXTENSIONS)
    raise W2SError(f"folder {folder} has no {split}.jsonl/.json/.parquet/.csv (it has: "
                   f"{', '.join(have) or 'no data files'}); name the split files train.<ext> "
                   "and test.<ext>, or pass one file")


def read_local(path: Path, kind: str | None = None, name: str | None = None) -> TaskData:
    """Read, normalise and validate every row of one file (no split, no subset)."""
    records = read_records(path)
    if not records:
        raise W2SError(f"{path}: no rows; add some, or check you passed the right file")
    if kind is None:
        kind = infer_kind(path, records)
    rows, first_line = [], {}
    for index, (where, record) in enumerate(records):
        row = _normalise(path, where, index, record, kind)
        problem = row_problem(row, kind)
        if problem:
            raise W2SError(f"{path}:{where}: {problem}; a {kind} row needs "
                           f"{', '.join(KIND_FIELDS[kind])} (id optional)")
        if row["id"] in first_line:
            raise W2SError(f"{path}:{where}: duplicate id {row['id']!r} (first at "
                           f"{first_line[row['id']]}); field 'id' must be unique")
        first_line[row["id"]] = where
        rows.append(row)
    meta = {"source": "local", "path": str(path), "format": path.suffix.lstrip("."),
            "file_hash": file_hash(path), "prompt_format": "plain"}
    return TaskData(name or f"local:{path}", kind, rows, meta)


def infer_kind(path: Path, records: list[tuple[str, Any]]) -> str:
    """The kind from the fields used anywhere in the file (see the module docstring)."""
    keys: set[str] = set()
    for _, record in records:
        if isinstance(record, dict):
            keys.update(record)
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "label" in keys:
        return "classification"
    if "prompt" in keys:
        return "prompts"
    raise W2SError(f"{path}: cannot tell the kind from its fields ({', '.join(sorted(keys))}); "
                   "use text+label, prompt+chosen+rejected, or prompt, or add #kind to the name")


def read_records(path: Path) -> list[tuple[str, Any]]:
    """``[(where, record), ...]``: ``where`` is ``"line N"``/``"record N"``/``"row N"`` (1-based)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            return [(f"line {reader.line_num}", dict(row)) for row in reader]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as e:
            raise W2SError(f"{path}: not a readable parquet file ({_first_line(e)}); "
                           "rewrite it or use jsonl") from None
        return [(f"row {i}", r) for i, r in enumerate(table.to_pylist(), 1)]
    raise W2SError(f"{path}: unsupported file type '{suffix or path.name}'; use "
                   f"{', '.join(EXTENSIONS)}")


def _read_jsonl(path: Path) -> list[tuple[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise W2SError(f"{path}:line {lineno}: not valid JSON ({e.msg} at column "
                               f"{e.colno}); fix or remove that line") from None
    return out


def _read_json(path: Path) -> list[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise W2SError(f"{path}:line {e.lineno}: not valid JSON ({e.msg}); fix the file") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise W2SError(f'{path}: expected a list of objects or {{"data": [...]}}, got a '
                       f"{type(data).__name__}; wrap the rows in a list")
    return [(f"record {i}", r) for i, r in enumerate(data, 1)]


def _normalise(path: Path, where: str, index: int, record: Any, kind: str) -> dict:
    """Fill a missing id, coerce the label, map empty references to None."""
    if not isinstance(record, dict):
        raise W2SError(f"{path}:{where}: not an object (a {type(record).__name__}); each row is "
                       "an object with named fields")
    row = {k: (None if _is_nan(v) else v) for k, v in record.items()}
    rid = row.get("id")
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        row["id"] = str(index)
    elif isinstance(rid, int) and not isinstance(rid, bool):
        row["id"] = str(rid)
    elif not isinstance(rid, str):
        raise W2SError(f"{path}:{where}: field 'id' must be a string or an integer "
                       f"(got {rid!r}); fix or drop the id")
    if kind == "classification" and row.get("label") is not None:
        label = coerce_label(row["label"])
        if label is None:
            raise W2SError(f"{path}:{where}: field 'label' must be a class number 0, 1, ... "
                           f"(got {row['label']!r}); map label names to numbers")
        row["label"] = label
    if kind == "prompts" and isinstance(row.get("reference"), str) and not row["reference"].strip():
        row["reference"] = None
    return row


def coerce_label(value: Any) -> int | None:
    """An int class from an int, bool, integral float or digit string; None if not a class."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and value >= 0 else None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    return None


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
