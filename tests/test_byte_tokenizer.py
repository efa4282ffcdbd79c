"""The pure-byte tokenizer (byte260): the challenge exporter's id layout, its byte rule, and its wiring into
prepare, stats, dataset resolution and evaluation."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pgolf
from pgolf.cli import main
from pgolf.config import EvalConfig
from pgolf.data.byte_tokenizer import ByteTokenizer
from pgolf.data.dataset import resolve_dataset
from pgolf.data.shards import read_shard
from pgolf.data.stats import shard_stats
from pgolf.data.tokenizer import (TokenizerError, byte_tables, decoded_utf8, encode_documents, load_tokenizer,
                                  stream_bytes, tokenizer_sha256)

from conftest import BYTE260_JSON, VAL_DOCS_BYTES, VAL_DOCS_JSONL
from test_model import small_model

TOK = ByteTokenizer()
TABLES = byte_tables(TOK, 260)
EDGE_TEXTS = ["", "plain ascii", "café, naïve, Ærø", "日本語のテキスト", "emoji 😀👍🏽 and flags 🇩🇪",
              "e\u0301 (combining acute)", "nul \x00 inside", "tab\tnewline\ncrlf\r\n", "\ufeffBOM first",
              "\U0010ffff last code point", "x" * 5000]


def document_bytes(texts: list[str]) -> list[int]:
    """Bytes the byte rule credits to each document of a [BOS] doc [BOS] doc ... stream; the BOS targets between
    documents must add nothing, so the whole stream's bytes are the documents' sum."""
    stream = np.concatenate(encode_documents(TOK, texts))
    per_target = stream_bytes(stream, TABLES)
    starts = np.flatnonzero(stream == TOK.bos_id())
    ends = list(starts[1:]) + [stream.size]
    # target i is stream[i + 1]; document d owns the targets stream[start+1 .. end-1]
    per_doc = [int(per_target[a : b - 1].sum()) for a, b in zip(starts, ends)]
    assert int(per_target.sum()) == sum(per_doc)
    return per_doc


def test_ids_follow_the_challenge_exporters_layout(tmp_path):
    assert (TOK.pad_id(), TOK.bos_id(), TOK.eos_id(), TOK.unk_id(), TOK.vocab_size()) == (0, 1, 2, 3, 260)
    assert TOK.encode("A") == [4 + 65]
    assert TOK.encode(["é", "\x00\xff"]) == [[4 + 0xC3, 4 + 0xA9], [4 + 0, 4 + 0xC3, 4 + 0xBF]]
    assert TOK.encode_array("é").tolist() == [4 + 0xC3, 4 + 0xA9]
    assert TOK.to_json() == BYTE260_JSON
    (tmp_path / "t.json").write_text(BYTE260_JSON)
    assert load_tokenizer(tmp_path / "t.json") == TOK == load_tokenizer("byte260")
    assert tokenizer_sha256("byte260") == hashlib.sha256(BYTE260_JSON.encode()).hexdigest() == tokenizer_sha256(tmp_path / "t.json")


def test_bytes_of_each_document_are_its_utf8_length():
    assert document_bytes(EDGE_TEXTS) == [len(t.encode("utf-8")) for t in EDGE_TEXTS]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=6))
def test_bytes_of_any_text_are_its_utf8_length(texts):
    assert document_bytes(texts) == [len(t.encode("utf-8")) for t in texts]


def test_text_without_a_utf8_form_is_counted_as_the_exporter_encodes_it():
    # A lone surrogate (what json.loads gives for "\ud800") has no UTF-8 form; the exporter's errors="replace"
    # writes one b"?" for it, and the byte rule counts exactly what was written.
    texts = ["a\ud800b", "\udfff", "mixed é \udc80 end"]
    assert document_bytes(texts) == [len(t.encode("utf-8", "replace")) for t in texts] == [3, 1, 14]
    assert TOK.decode_bytes(TOK.encode("a\ud800b")) == b"a?b"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_byte_string_counts_one_byte_per_byte_token(raw):
    # invalid UTF-8 too (b"\xff", cut sequences, overlong forms): the bytes are what the tokens stand for
    ids = np.concatenate(([TOK.bos_id()], np.frombuffer(raw, np.uint8).astype(np.int64) + 4))
    assert int(stream_bytes(ids, TABLES).sum()) == len(raw)
    assert decoded_utf8(TOK, ids[1:].tolist()) == raw


def test_specials_and_ids_past_the_tokenizer_count_zero():
    tables = byte_tables(TOK, 264)  # a model vocabulary padded past the tokenizer's 260
    stream = np.array([1, 4 + 65, 0, 4 + 66, 2, 3, 1, 4 + 67, 261, 263, 4 + 68])
    assert stream_bytes(stream, tables).tolist() == [1, 0, 1, 0, 0, 0, 1, 0, 0, 1]
    assert not tables.has_leading_space.any()


@pytest.mark.parametrize("change, message", [
    ({"tokenizer_type": "sentencepiece"}, "tokenizer_type is 'sentencepiece', expected 'pure_byte'"),
    ({"config": {"byte_count": 255}}, "config.byte_count = 255, expected 256"),
    ({"config": {"bos_id": 4}}, "special ids [0, 4, 2, 3] must be distinct and below byte_offset 4"),
    ({"config": {"eos_id": "2"}}, "config.eos_id = '2', expected a non-negative integer"),
    ({"vocab_size": 256}, "vocab_size = 256, but byte_offset + byte_count = 260"),
])
def test_a_bad_byte_tokenizer_file_names_the_key(tmp_path, change, message):
    payload = json.loads(BYTE260_JSON)
    for key, value in change.items():
        payload[key] = {**payload[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(TokenizerError, match=re.escape(message)) as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- wiring

@pytest.fixture(scope="module")
def byte_folder(tmp_path_factory, shared_data):
    """The 600 validation documents prepared with --tokenizer byte260 (through the CLI)."""
    out = tmp_path_factory.mktemp("byte260") / "data"
    assert main(["data", "prepare", "--input", str(VAL_DOCS_JSONL), "--tokenizer", "byte260", "--val-docs", "500",
                 "--out", str(out), "--quiet"]) == 0
    return out


def test_prepare_and_stats_with_byte260_count_the_documents_utf8_bytes(byte_folder):
    assert (byte_folder / "tokenizer.json").read_text() == BYTE260_JSON
    texts = [json.loads(line)["text"] for line in VAL_DOCS_JSONL.read_text().splitlines()]
    val, train = texts[:500], texts[500:]
    for split, docs in (("val", val), ("train", train)):
        stats = shard_stats(byte_folder / f"fineweb_{split}_000000.bin", byte_folder / "tokenizer.json", check_decode=True)
        utf8 = sum(len(t.encode()) for t in docs)
        assert stats["bytes"] == stats["decoded_utf8_bytes"] == utf8
        assert stats["tokens"] == len(docs) + utf8 and stats["documents"] == len(docs)
    assert sum(len(t.encode()) for t in texts) == VAL_DOCS_BYTES


@pytest.mark.parametrize("tokenizer", ["", "byte260"])
def test_a_byte260_folder_resolves_its_tokenizer_and_vocabulary(byte_folder, tokenizer):
    cfg = pgolf.load_recipe("baseline", scale="tiny", overrides={"data.path": str(byte_folder), "data.tokenizer": tokenizer,
                                                                  "model.vocab_size": 260})
    dataset = resolve_dataset(cfg, progress=False)
    assert dataset.tokenizer_vocab == 260
    assert dataset.checksums()["tokenizer_sha256"] == hashlib.sha256(BYTE260_JSON.encode()).hexdigest()


def test_val_bpb_with_byte260_divides_by_the_texts_utf8_bytes(byte_folder):
    tokens = np.asarray(read_shard(byte_folder / "fineweb_val_000000.bin"))
    tokens = tokens[: np.flatnonzero(tokens == 1)[5]]  # the first 5 whole documents: 4 BOS tokens are targets
    texts = [json.loads(line)["text"] for line in VAL_DOCS_JSONL.read_text().splitlines()][: int((tokens == 1).sum())]
    model = small_model({"model.vocab_size": 260})
    ev = pgolf.evaluate(model, tokens, "byte260", EvalConfig(context_len=128, batch_seqs=4))
    # every target after the first BOS is a byte, except the BOS tokens that start the later documents
    assert ev.bytes == sum(len(t.encode()) for t in texts) == ev.targets - (len(texts) - 1)
    assert ev.val_bpb == pytest.approx(float(ev.token_nll.astype(np.float64).sum()) / math.log(2) / ev.bytes, rel=1e-12)


def test_the_challenge_layouts_byte260_names_agree_with_the_tokenizer():
    """dataset.py names the byte260 tokenizer file and vocabulary without importing the (optional) module."""
    from pgolf.data.byte_tokenizer import BYTE260_FILENAME
    from pgolf.data.dataset import BYTE260_TOKENIZER, BYTE260_VOCAB, challenge_paths
    assert BYTE260_VOCAB == TOK.vocab_size() and BYTE260_TOKENIZER == f"tokenizers/{BYTE260_FILENAME}"
    assert challenge_paths(260)[1] == BYTE260_TOKENIZER


def test_a_byte260_script_carries_the_byte_tokenizer_and_an_sp_script_does_not(byte_folder, tmp_path):
    """pgolf.data.byte_tokenizer rides only with a pure-byte data.tokenizer; that script trains and scores as
    the package does (test_bundle._run_case), and an sp script refuses a DATA_PATH whose tokenizer is byte260."""
    from pgolf.artifact import bundle
    from pgolf.training.bundle_entry import bundle_config
    from conftest import micro_config
    from test_bundle import _run_case
    import tomli_w
    cfg = micro_config("baseline", train__steps=2, data__path=str(byte_folder), data__tokenizer="byte260",
                       model__vocab_size=260)
    assert "pgolf/data/byte_tokenizer.py" in bundle.module_sources(cfg)
    _run_case(cfg, tmp_path / "byte")
    sp = micro_config("baseline")
    carried = set(bundle.module_sources(sp))
    assert "pgolf/data/byte_tokenizer.py" not in carried
    text = tomli_w.dumps(bundle.config_delta(bundle.script_config(sp)))
    with pytest.raises(pgolf.ConfigError, match="does not carry pgolf.data.byte_tokenizer"):
        bundle_config(text, {"DATA_PATH": str(byte_folder), "TOKENIZER_PATH": "byte260"}, carried)
    moved = bundle.script_config(sp)
    moved.data.tokenizer = str(tmp_path / "gone.model")  # the run's tokenizer is not on this machine: the new
    text = tomli_w.dumps(bundle.config_delta(moved))       # folder's own is used, here its tokenizer.json
    with pytest.raises(pgolf.ConfigError, match="does not carry pgolf.data.byte_tokenizer"):
        bundle_config(text, {"DATA_PATH": str(byte_folder)}, carried)
