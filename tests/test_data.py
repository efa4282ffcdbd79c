"""Shards, tokenizer byte rule, prepare/stats, the loader, and data checks before training."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import pgolf
from pgolf.data.dataset import DataMismatchError, resolve_dataset
from pgolf.data.loader import DistributedTokenLoader
from pgolf.data.docs import prepare_file, read_documents
from pgolf.data.prepare import InputError, prepare_documents
from pgolf.data.shards import (HEADER_BYTES, ShardError, find_shards, read_shard, write_shard)
from pgolf.data.stats import shard_stats
from pgolf.data.tokenizer import byte_tables, load_tokenizer, stream_bytes, train_tokenizer

from conftest import SP1024_MODEL, VAL_DOCS_JSONL, VAL_SHARD, random_stream


# ----------------------------------------------------------------------------- shard format

def test_shard_round_trip_is_byte_compatible(tmp_path):
    toks = random_stream(1000, 1024)
    path = tmp_path / "s.bin"
    write_shard(path, toks)
    assert path.stat().st_size == HEADER_BYTES + 2 * 1000
    header = np.fromfile(path, dtype="<i4", count=3)
    assert header.tolist() == [20240520, 1, 1000]
    assert np.array_equal(read_shard(path), toks)


def _corrupt(path, offset, value, dtype="<i4"):
    data = bytearray(path.read_bytes())
    data[offset : offset + np.dtype(dtype).itemsize] = np.array([value], dtype=dtype).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("mutate, message", [
    (lambda p: _corrupt(p, 0, 12345), "bad magic 12345"),
    (lambda p: _corrupt(p, 4, 2), "unsupported shard version 2"),
    (lambda p: _corrupt(p, 8, 1001), "truncated: header says 1001 tokens"),
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes() + b"xx"), "size mismatch"),
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "shorter than the 1024-byte header"),
])
def test_bad_shards_name_the_file_and_the_problem(tmp_path, mutate, message):
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, random_stream(1000, 1024))
    mutate(path)
    with pytest.raises(ShardError, match=message) as info:
        read_shard(path)
    assert str(path) in str(info.value)


def test_token_id_beyond_vocab_is_reported_with_position(tmp_path):
    toks = random_stream(1000, 1024)
    toks[437] = 1500
    path = tmp_path / "s.bin"
    write_shard(path, toks)
    with pytest.raises(ShardError, match=r"s.bin: token id 1500 at position 437 is >= vocab size 1024"):
        read_shard(path, vocab_size=1024)


def test_empty_folder_and_missing_validation_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no training shards matching"):
        find_shards(tmp_path / "empty", "fineweb_train_*.bin", "training")
    with pytest.raises(ShardError, match="data folder not found"):
        find_shards(tmp_path / "nope", "fineweb_train_*.bin", "training")


# ----------------------------------------------------------------------------- tokenizer and bytes

def test_byte_rule_on_official_val_sample_equals_decoded_utf8(shared_data):
    stats = shard_stats(VAL_SHARD, SP1024_MODEL, check_decode=True)
    assert stats["targets"] == 680_036
    assert stats["bytes"] == 1_634_550
    assert stats["decoded_utf8_bytes"] == 1_634_550
    assert stats["documents"] == 600


def test_stats_cli_json(shared_data, capsys):
    from pgolf.cli import main
    assert main(["data", "stats", str(VAL_SHARD), "--tokenizer", str(SP1024_MODEL), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["targets"] == 680_036 and out["bytes"] == 1_634_550


def test_prepare_reproduces_the_official_shard_token_for_token(shared_data, tmp_path):
    docs = [json.loads(line)["text"] for line in VAL_DOCS_JSONL.read_text().splitlines()]
    meta = prepare_documents(docs, tmp_path / "out", tokenizer=SP1024_MODEL, val_docs=len(docs), progress=False)
    assert meta["val"]["docs"] == 600
    ours = read_shard(tmp_path / "out" / "fineweb_val_000000.bin")
    assert np.array_equal(np.asarray(ours), np.asarray(read_shard(VAL_SHARD)))
    assert (tmp_path / "out" / "fineweb_val_000000.bin").read_bytes() == VAL_SHARD.read_bytes()


def test_prepare_cli_reproduces_the_official_validation_shard(shared_data, tmp_path, capsys):
    from pgolf.cli import main
    # the first --val-docs documents are validation, as the challenge's exporter takes its first 50,000
    assert main(["data", "prepare", "--input", str(VAL_DOCS_JSONL), "--tokenizer", str(SP1024_MODEL),
                 "--val-docs", "600", "--out", str(tmp_path / "one"), "--quiet"]) == 0
    assert (tmp_path / "one" / "fineweb_val_000000.bin").read_bytes() == VAL_SHARD.read_bytes()
    # fixed-size shards that documents cross, like the exporter's 100M-token ones
    assert main(["data", "prepare", "--input", str(VAL_DOCS_JSONL), "--tokenizer", str(SP1024_MODEL),
                 "--val-docs", "600", "--shard-tokens", "100000", "--out", str(tmp_path / "many"), "--quiet"]) == 0
    shards = find_shards(tmp_path / "many", "fineweb_val_*.bin", "validation")
    assert [read_shard(f).size for f in shards] == [100_000] * 6 + [80_037]
    assert np.array_equal(np.concatenate([read_shard(f) for f in shards]), read_shard(VAL_SHARD))
    assert not list((tmp_path / "many").glob("fineweb_train_*"))


def _docs_with_sidecar(tmp_path, **sidecar_changes):
    """docs_selected.jsonl (the 600 validation documents, then 5 more) and its sidecar, as the challenge's."""
    lines = VAL_DOCS_JSONL.read_text().splitlines()
    docs = "".join(json.dumps({"text": json.loads(line)["text"]}, ensure_ascii=False) + "\n"
                   for line in lines + lines[:5]).encode()
    path = tmp_path / "docs_selected.jsonl"
    path.write_bytes(docs)
    sidecar = {"num_docs": 605, "docs_val": 600, "docs_bytes": len(docs), "docs_sha256": hashlib.sha256(docs).hexdigest()}
    (tmp_path / "docs_selected.source_manifest.json").write_text(json.dumps({**sidecar, **sidecar_changes}))
    return path


def test_prepare_takes_the_validation_count_from_the_docs_sidecar_and_checks_the_file(shared_data, tmp_path):
    docs = _docs_with_sidecar(tmp_path)
    meta = prepare_file(docs, tmp_path / "out", tokenizer=SP1024_MODEL, progress=False)
    assert meta["docs"]["checked"] == ["docs_sha256", "docs_bytes", "num_docs"]
    assert (meta["stats"]["docs_val"], meta["stats"]["docs_train"]) == (600, 5)
    assert (tmp_path / "out" / "fineweb_val_000000.bin").read_bytes() == VAL_SHARD.read_bytes()


@pytest.mark.parametrize("damage, message", [
    ("one character", "docs_sha256 is "),
    ("truncated", "bytes, but "),
    ("num_docs", "num_docs is 605 here but 606 in the sidecar"),
])
def test_prepare_refuses_documents_that_disagree_with_their_sidecar(shared_data, tmp_path, capsys, damage, message):
    from pgolf.cli import main
    docs = _docs_with_sidecar(tmp_path, **({"num_docs": 606} if damage == "num_docs" else {}))
    data = docs.read_bytes()
    if damage == "one character":
        i = data.index(b"Insurance")
        docs.write_bytes(data[:i] + b"J" + data[i + 1 :])  # same size: only the hash can tell
    if damage == "truncated":
        docs.write_bytes(data[:-100])
    assert main(["data", "prepare", "--input", str(docs), "--tokenizer", str(SP1024_MODEL), "--out",
                 str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "docs_selected.source_manifest.json" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs_selected.jsonl", "docs_selected.source_manifest.json"]


def test_tokenizer_train_docs_takes_the_first_documents_validation_included(tmp_path):
    # validation documents are all about quokkas; the training ones never mention them
    docs = ["quokka quokka quokka " * 30 for _ in range(5)] + [f"alpha beta gamma delta {i} " * 20 for i in range(40)]
    default = prepare_documents(docs, tmp_path / "train_only", vocab_size=340, val_docs=5, progress=False)
    exporter = prepare_documents(docs, tmp_path / "first_n", vocab_size=340, val_docs=5, tokenizer_train_docs=45,
                                 progress=False)
    assert default["tokenizer_source"] == "trained on the 40 training documents"
    assert exporter["tokenizer_source"].startswith("trained on the first 45 documents")
    sps = {name: load_tokenizer(tmp_path / name / "tokenizer.model") for name in ("train_only", "first_n")}
    pieces = {name: {sp.id_to_piece(i) for i in range(sp.vocab_size())} for name, sp in sps.items()}
    assert "quokka" not in pieces["train_only"] and "▁quokka" not in pieces["train_only"]
    assert "quokka" in pieces["first_n"] or "▁quokka" in pieces["first_n"]


def test_trained_tokenizer_keeps_exact_bytes(tmp_path):
    docs = [f"Document {i}: the quick brown fox jumps over the lazy dog — café №{i}. " * 5 for i in range(60)]
    model = train_tokenizer(docs[10:], 400, tmp_path / "tok")
    sp = load_tokenizer(model)
    tables = byte_tables(sp)
    for doc in docs[:10]:
        toks = np.array([1] + sp.encode(doc), dtype=np.int64)
        assert int(stream_bytes(toks, tables).sum()) == len(sp.decode(toks[1:].tolist()).encode("utf-8"))


def test_prepare_splits_by_document_and_trains_on_train_only(tmp_path):
    docs = [f"alpha beta gamma {i} " * 20 for i in range(30)] + ["zebra xylophone quux " * 40]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    loaded = read_documents(src)
    assert loaded == docs
    # the last document is training data: its words are learnable pieces; val docs (first 5) are not trained on
    meta = prepare_documents(loaded, tmp_path / "out", vocab_size=400, val_docs=5, progress=False)
    assert meta["val"]["docs"] == 5 and meta["train"]["docs"] == 26
    val = read_shard(tmp_path / "out" / "fineweb_val_000000.bin")
    assert int((np.asarray(val) == 1).sum()) == 5


def test_bad_jsonl_names_line(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(InputError, match=r"d.jsonl:2: expected an object with a string 'text' field"):
        read_documents(src)


# ----------------------------------------------------------------------------- loader

def test_loader_spans_are_disjoint_and_cover_the_stream(tmp_path):
    toks = np.arange(10_000, dtype=np.uint16) % 1000
    write_shard(tmp_path / "fineweb_train_000000.bin", toks)
    files = [tmp_path / "fineweb_train_000000.bin"]
    single = DistributedTokenLoader(files, 0, 1)
    r0, r1 = DistributedTokenLoader(files, 0, 2), DistributedTokenLoader(files, 1, 2)
    for _ in range(3):
        a = [single.next_batch(256, 64, 2) for _ in range(2)]
        b = [r0.next_batch(256, 64, 1), r1.next_batch(256, 64, 1)]
        for (xa, ya), (xb, yb) in zip(a, b):
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
            assert np.array_equal(xa[:, 1:], ya[:, :-1])


def test_loader_state_resumes_exactly(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", random_stream(3000, 512))
    write_shard(tmp_path / "fineweb_train_000001.bin", random_stream(3000, 512, seed=1))
    files = sorted(tmp_path.glob("fineweb_train_*.bin"))
    a = DistributedTokenLoader(files)
    for _ in range(7):
        a.next_batch(512, 128, 1)
    state = a.state_dict()
    expected = [a.next_batch(512, 128, 1)[0] for _ in range(10)]
    b = DistributedTokenLoader(files)
    b.load_state_dict(state)
    assert all(np.array_equal(b.next_batch(512, 128, 1)[0], e) for e in expected)


def test_vocab_mismatch_names_all_three_values(shared_data):
    cfg = pgolf.load_recipe("tiny", overrides={"data.path": str(VAL_SHARD.parent), "data.tokenizer": str(SP1024_MODEL),
                                               "model.vocab_size": 512})
    with pytest.raises(DataMismatchError, match=r"has 1024 pieces, model.vocab_size = 512.*token ids up to 10(1|2)\d"):
        resolve_dataset(cfg)


def test_data_folder_without_validation_fails_before_training(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", random_stream(1000, 1024))
    cfg = pgolf.load_recipe("tiny", overrides={"data.path": str(tmp_path), "data.tokenizer": "x.model"})
    with pytest.raises(ShardError, match="no validation shards"):
        resolve_dataset(cfg)
