"""Text sets: the reference chunker, the three input formats, identity by content, bad input."""

import json

import pytest

from atlas.errors import StoreError, TextSetError
from atlas.textsets import (
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    TextSet,
    chunk_bytes,
    chunk_document,
    content_hash,
    load_textset,
    write_jsonl,
)

MULTIBYTE = "aé中🙂" * 700  # 1, 2, 3 and 4-byte characters: every cut lands near one


def test_chunker_bounds_and_utf8_boundaries():
    pieces = list(chunk_bytes(MULTIBYTE.encode("utf-8")))
    assert b"".join(pieces) == MULTIBYTE.encode("utf-8")
    for piece in pieces:
        assert len(piece) <= MAX_CHUNK_BYTES
        piece.decode("utf-8")  # never splits a character
    assert all(len(p) >= MAX_CHUNK_BYTES - 3 for p in pieces[:-1])  # greedy


def test_chunk_document_keeps_only_chunks_over_256_bytes():
    text = "x" * (2 * MAX_CHUNK_BYTES + MIN_CHUNK_BYTES)  # tail of exactly 256 bytes: dropped
    chunks = chunk_document(text)
    assert [len(c) for c in chunks] == [MAX_CHUNK_BYTES, MAX_CHUNK_BYTES]
    assert [len(c) for c in chunk_document("y" * 2305)] == [1024, 1024, 257]


def test_identity_is_content_and_order_only():
    a = TextSet(["one", "two"], domains=["x", "y"], source="a")
    b = TextSet(["one", "two"], source="b")
    assert a.content_hash == b.content_hash
    assert content_hash(["two", "one"]) != a.content_hash
    assert content_hash(["on", "etwo"]) != a.content_hash  # framing: no concatenation clash


def test_json_list_jsonl_and_folder(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(["première", "second text"]))
    listed = load_textset(tmp_path / "list.json")
    assert listed.texts == ["première", "second text"]
    assert listed.mean_bytes == pytest.approx((9 + 11) / 2)  # è is two bytes

    lines = [{"text": "alpha", "pile_set_name": "Pile-CC", "pile_idx": 3},
             {"text": "beta", "meta": {"pile_set_name": "Github"}}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    jsonl = load_textset(tmp_path / "t.jsonl")
    assert jsonl.texts == ["alpha", "beta"] and jsonl.domains == ["Pile-CC", "Github"]
    assert jsonl.metas[0] == {"pile_set_name": "Pile-CC", "pile_idx": 3}

    folder = tmp_path / "docs"
    (folder / "law").mkdir(parents=True)
    (folder / "law" / "a.txt").write_text("L" * 1500)
    (folder / "b.txt").write_text("short")  # ≤ 256 bytes: no chunk kept
    texts = load_textset(folder)
    assert [len(t) for t in texts.texts] == [1024, 476]
    assert texts.domains == ["law", "law"]
    assert texts.metas[1] == {"file": "law/a.txt", "chunk_idx": 1}


# every character str.splitlines() breaks on besides \n and \r
LINE_BREAKS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def test_jsonl_round_trip_keeps_every_line_break_character(tmp_path):
    texts = TextSet([f"before{char}after {i}" for i, char in enumerate(LINE_BREAKS)],
                    domains=["a\u2028b"] * len(LINE_BREAKS))
    path = write_jsonl(texts, tmp_path / "t.jsonl")
    assert path.read_text(encoding="utf-8").count("\n") == len(LINE_BREAKS)
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(LINE_BREAKS)  # any reader
    back = load_textset(path)
    assert back.texts == texts.texts and back.domains == texts.domains


def test_jsonl_written_by_others_with_raw_line_separators(tmp_path):
    records = [{"text": f"x{char}y", "domain": "d\u2028"} for char in LINE_BREAKS]
    path = tmp_path / "t.jsonl"
    path.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\r\n",
                    encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")  # raw, as json.dumps wrote it
    loaded = load_textset(path)
    assert loaded.texts == [r["text"] for r in records]
    assert loaded.domains == ["d\u2028"] * len(records)


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    (b"", "the file is empty"),
    (b"  \n", "the file is empty"),
    (b'["ok", ', "invalid JSON at line 1"),
    (b'{"text": "a"}\n{"txt": "b"}\n', r't.jsonl:2: expected an object with a "text" field'),
    (b'{"text": "a"}\n{"text": ""}\n', "t.jsonl:2: empty text"),
    (b'{"text": "caf\xe9"}\n', "invalid UTF-8 at byte 13"),
    (b'["a", 3]', "item 1: expected a string"),
    (b'{"text": "\\ud800"}\n', "not valid Unicode"),
])
def test_bad_text_files_are_explained(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TextSetError, match=message):
        load_textset(path)


def test_folder_without_texts(tmp_path):
    with pytest.raises(TextSetError, match=r"no \.txt files"):
        load_textset(tmp_path)


def test_store_refuses_name_and_content_clashes_and_keeps_the_original(db, textset):
    stored, new = db.import_textset(textset, "eval")
    assert not new and stored.n_texts == len(textset)
    with pytest.raises(StoreError, match="already stored as text set 'eval'"):
        db.import_textset(textset, "again")
    with pytest.raises(StoreError, match="'eval' already exists with other texts"):
        db.import_textset(TextSet(["different"]), "eval")
    assert db.textsets()["name"].to_list() == ["eval"]
    stored_texts = db.sql("SELECT text FROM texts ORDER BY idx")["text"].to_list()
    assert stored_texts == textset.texts
