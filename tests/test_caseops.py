"""CaseOps (#1729/#1736): the transform round-trips exactly, and its bytes are the original text's.

The CaseOps tokenizer here is trained by pgolf itself on the shared FineWeb documents (the record's .model is not
committed; one test reads it from the upstream git dir when that is present). Byte figures on the shared data:
- the 600 shared validation documents (already SentencePiece-normalised text): token rule = sidecar = UTF-8
  length of every document, 1,634,550 in all, as the plain tokenizer counts them;
- the 200 raw FineWeb documents: the token rule equals the plain tokenizer's count of the same text (1,489,418,
  the normalised text), the sidecar the original UTF-8 length (1,489,515): 97 bytes of NFKC and whitespace.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pgolf
from pgolf.config import ConfigError
from pgolf.data import caseops
from pgolf.data.caseops import ALLCAPS, CAPNEXT, ESC, OPERATORS, TITLE, CaseOpsError
from pgolf.data.dataset import (DataMismatchError, resolve_dataset, validation_bytes, validation_files)
from pgolf.data.prepare import prepare_documents
from pgolf.data.shards import ShardError, read_shard, write_shard
from pgolf.data.stats import shard_stats
from pgolf.data.tokenizer import (TokenizerError, byte_tables, encode_documents, load_tokenizer, stream_bytes,
                                  train_tokenizer)
from pgolf.eval.bpb import evaluate
from pgolf.model.gpt import build_model

from conftest import MICRO, RAW_DOCS_JSONL, SP1024_MODEL, VAL_DOCS_JSONL

T, A, C, E = TITLE, ALLCAPS, CAPNEXT, ESC


def _docs(path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def val_docs(shared_data):
    return _docs(VAL_DOCS_JSONL)


@pytest.fixture(scope="module")
def raw_docs(shared_data):
    return _docs(RAW_DOCS_JSONL)


@pytest.fixture(scope="module")
def caseops_sp(raw_docs, tmp_path_factory):
    """A CaseOps sp1024 trained by pgolf on the 200 raw FineWeb documents (transformed)."""
    model = train_tokenizer([caseops.encode(t) for t in raw_docs], 1024, tmp_path_factory.mktemp("tok") / "caseops",
                            user_defined_symbols=OPERATORS)
    return load_tokenizer(model)


# ----------------------------------------------------------------------------- the transform

@pytest.mark.parametrize("text, encoded", [
    ("The NASA Launch of iPhone McDonald's A", f"{T}the {A}nasa {T}launch of i{C}phone {T}mc{C}donald's {T}a"),
    ("x\ue001y", f"x{E}\ue001y"),
    ("A", f"{T}a"),                      # a lone capital is TITLE, not ALLCAPS (the len >= 2 guard)
    ("AB", f"{A}ab"),
    ("ABc", f"{T}a{C}bc"),
    ("aBC", f"a{C}b{C}c"),
    ("hello world", "hello world"),
    ("ÉCOLE Ünïcode", f"É{A}cole Ünïcode"),  # non-ASCII letters are never touched; they end a run
    ("\ue004\ue004", f"{E}\ue004{E}\ue004"),
    ("\ue000Q", f"\ue000{T}q"),          # U+E000 (the v1 sentinel) is not an operator
    ("R2D2", f"{T}r2{T}d2"),
])
def test_encoding_of_the_spec_examples(text, encoded):
    assert caseops.encode(text) == encoded
    assert caseops.decode(encoded) == text


_ALPHABET = st.one_of(st.characters(), st.sampled_from(OPERATORS + ("\ue000", "A", "b", "Z", "é", "É", " ", "™")))


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=60))
def test_round_trip_on_arbitrary_text(text):
    """decode(encode(t)) == t for any string, operator characters and lone surrogates included; the encoding has
    no ASCII capital, and every operator character of the input comes out escaped."""
    encoded = caseops.encode(text)
    assert caseops.decode(encoded) == text
    assert not any("A" <= ch <= "Z" for ch in encoded)
    assert encoded.count(ESC) - 2 * text.count(ESC) == sum(text.count(op) for op in OPERATORS if op != ESC)


def test_round_trip_on_the_shared_documents(val_docs, raw_docs):
    for i, text in enumerate(val_docs + raw_docs):
        assert caseops.decode(caseops.encode(text)) == text, i


@pytest.mark.parametrize("bad", [f"a{T}b", f"{T}{A}a", f"{C}{C}a", f"{T} a", f"{A}", f"x{E}", f"{C}1"])
def test_decode_names_a_misplaced_marker(bad):
    with pytest.raises(CaseOpsError):
        caseops.decode(bad)


def test_the_inverse_is_not_total_on_sentencepiece_text(caseops_sp):
    """NFKC turns '™' into 'TM' right before a TITLE marker: the decoded CaseOps text has a marker inside a word.
    So bytes are defined by the token rule, never by inverting the decoded text."""
    ids = caseops_sp.encode(caseops.encode("™The end"))
    with pytest.raises(CaseOpsError, match="inside a word"):
        caseops.decode(caseops_sp.decode(ids))


# ----------------------------------------------------------------------------- bytes

def _reference_escape_bytes(ids: list[int], base: dict[int, int], esc: int, literal: dict[int, int]) -> list[int]:
    """The escape rule read left to right with a flag (independent of tokenizer.escaped_literals)."""
    out, escaped = [], False
    for t in ids:
        if escaped and t in literal:
            out.append(literal[t])
            escaped = False
        else:
            out.append(base[t])
            escaped = t == esc
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 2, 3, 4, 5]), min_size=2, max_size=40))
def test_escape_rule_matches_a_left_to_right_reading(ids):
    """Ids 0..3 are operators (3 = ESC, 0 bytes, 3 as literals), 4 and 5 ordinary (1 and 2 bytes): stream_bytes
    credits every target as the flag machine does, through runs of ESC of any length."""
    from pgolf.data.tokenizer import ByteTables, EscapeRule
    base = {0: 0, 1: 0, 2: 0, 3: 0, 4: 1, 5: 2}
    tables = ByteTables(np.array([base[i] for i in range(6)], dtype=np.int16), np.zeros(6, bool), np.zeros(6, bool),
                        EscapeRule(3, {0: 3, 1: 3, 2: 3, 3: 3}))
    got = stream_bytes(np.array(ids), tables).tolist()
    assert got == _reference_escape_bytes(ids, base, 3, {0: 3, 1: 3, 2: 3, 3: 3})[1:]


def test_operator_pieces_count_zero_and_the_escaped_literal_its_bytes(caseops_sp):
    ops = caseops.operator_ids(caseops_sp)
    text = "Ab \ue001 \ue004\ue004x NASA"
    ids = np.array([1] + caseops_sp.encode(caseops.encode(text)), dtype=np.int64)
    credited = stream_bytes(ids, caseops.caseops_byte_tables(caseops_sp))
    assert int(credited.sum()) == len(text.encode("utf-8"))
    targets = ids[1:]
    is_op = np.isin(targets, list(ops.values()))
    # 2 TITLE/ALLCAPS + 3 ESC markers at 0 bytes, the 3 literal operators of the input at 3 bytes each
    assert sorted(credited[is_op].tolist()) == [0] * 5 + [3] * 3
    (ids_again, sidecar), = caseops.encode_with_original_bytes(caseops_sp, [caseops.encode(text)])
    np.testing.assert_array_equal(ids_again, ids)
    np.testing.assert_array_equal(sidecar[1:], credited)  # already-normalised text: the two rules agree per token


def test_counting_operators_as_their_text_is_refused(caseops_sp):
    """The byte rule cannot count a user-defined piece unless told; 'as its text' (3 bytes) is refused for the
    CaseOps operators, so the flattering count cannot be asked for by mistake."""
    with pytest.raises(TokenizerError, match="user-defined piece"):
        byte_tables(caseops_sp)
    with pytest.raises(TokenizerError, match="CaseOps operator"):
        byte_tables(caseops_sp, user_defined_bytes="text")
    with pytest.raises(TokenizerError, match="not trained for CaseOps"):
        caseops.caseops_byte_tables(load_tokenizer(SP1024_MODEL))


def test_both_rules_equal_the_original_bytes_per_document_on_the_shared_val_docs(val_docs, caseops_sp):
    """Already-normalised text: per document, token rule = sidecar = UTF-8 length; 1,634,550 over the 600 (the
    plain sp1024's figure for the same documents). Crediting operators 3 bytes would add 162,213 (54,071 x 3)."""
    tables = caseops.caseops_byte_tables(caseops_sp)
    encoded = caseops.encode_with_original_bytes(caseops_sp, [caseops.encode(t) for t in val_docs])
    tokens = [int(stream_bytes(ids, tables).sum()) for ids, _ in encoded]
    sidecar = [int(counts.sum()) for _, counts in encoded]
    original = [len(t.encode("utf-8")) for t in val_docs]
    assert tokens == original and sidecar == original
    assert sum(original) == 1_634_550
    for ids, counts in encoded:
        assert ids.size == counts.size and counts[0] == 0
    assert [list(ids[1:]) for ids, _ in encoded[:20]] == caseops_sp.encode([caseops.encode(t) for t in val_docs[:20]])


def test_token_rule_is_the_plain_count_and_the_sidecar_the_original_on_raw_docs(raw_docs, caseops_sp):
    """Raw FineWeb text: the token rule equals the plain sp1024's challenge count of the same document (the
    normalised text), the sidecar the document's original UTF-8 length; they differ where NFKC or whitespace
    handling changed the text: 97 bytes over the 200."""
    plain = load_tokenizer(SP1024_MODEL)
    plain_bytes = [int(stream_bytes(ids, byte_tables(plain)).sum()) for ids in encode_documents(plain, raw_docs)]
    tables = caseops.caseops_byte_tables(caseops_sp)
    encoded = caseops.encode_with_original_bytes(caseops_sp, [caseops.encode(t) for t in raw_docs])
    tokens = [int(stream_bytes(ids, tables).sum()) for ids, _ in encoded]
    sidecar = [int(counts.sum()) for _, counts in encoded]
    assert tokens == plain_bytes
    assert sidecar == [len(t.encode("utf-8")) for t in raw_docs]
    assert (sum(tokens), sum(sidecar)) == (1_489_418, 1_489_515)
    assert sum(s != t for s, t in zip(sidecar, tokens)) > 0


# ----------------------------------------------------------------------------- prepare, stats, data, bpb

@pytest.fixture(scope="module")
def raw_val(raw_docs):
    """The validation documents of raw_val_folder: raw documents 40-89 (document 40, the first, has one byte that
    NFKC changes, so even the first 4,096 targets tell the two byte sources apart)."""
    return raw_docs[40:90]


@pytest.fixture(scope="module")
def raw_val_folder(raw_docs, raw_val, tmp_path_factory):
    """pgolf data prepare --transform caseops with raw_val as validation and the other 150 for training."""
    out = tmp_path_factory.mktemp("caseops") / "data"
    prepare_documents(raw_val + raw_docs[:40] + raw_docs[90:], out, vocab_size=1024, val_docs=len(raw_val),
                      progress=False, transform="caseops")
    return out


def test_prepare_writes_caseops_shards_and_a_sidecar_in_lockstep(raw_val, raw_val_folder):
    meta = json.loads((raw_val_folder / "meta.json").read_text())
    assert meta["text_transform"] == "caseops" and meta["val"]["docs"] == 50
    sp = load_tokenizer(raw_val_folder / "tokenizer.model")
    assert caseops.operator_ids(sp) == {TITLE: 4, ALLCAPS: 5, CAPNEXT: 6, ESC: 7}  # the record's id layout
    tokens = np.asarray(read_shard(raw_val_folder / "fineweb_val_000000.bin"))
    counts = np.asarray(read_shard(raw_val_folder / "fineweb_val_bytes_000000.bin"))
    assert tokens.size == counts.size == meta["val"]["tokens"]
    assert not (raw_val_folder / "fineweb_train_bytes_000000.bin").exists()
    starts = list(np.flatnonzero(tokens == 1)) + [tokens.size]
    assert len(starts) == 51 and np.all(counts[tokens == 1] == 0)
    for doc, (a, b) in enumerate(zip(starts[:-1], starts[1:])):  # document by document
        assert int(counts[a:b].sum()) == len(raw_val[doc].encode("utf-8")), doc
        assert tokens[a + 1 : b].tolist() == sp.encode(caseops.encode(raw_val[doc]))
    assert meta["val"]["sidecar_bytes"] == sum(len(t.encode("utf-8")) for t in raw_val)
    assert not any("A" <= ch <= "Z" for tid in range(264, sp.vocab_size()) for ch in sp.id_to_piece(tid))


def test_prepare_splits_the_sidecar_at_the_token_shards_boundaries(raw_docs, tmp_path):
    prepare_documents(raw_docs[:12], tmp_path / "d", tokenizer=None, vocab_size=512, val_docs=6,
                      shard_tokens=3000, progress=False, transform="caseops")
    tok = sorted((tmp_path / "d").glob("fineweb_val_0*.bin"))
    side = sorted((tmp_path / "d").glob("fineweb_val_bytes_*.bin"))
    assert len(tok) == len(side) > 1
    assert [read_shard(t).size for t in tok] == [read_shard(s).size for s in side]


def test_stats_reports_both_byte_counts(raw_val, raw_val_folder, capsys):
    from pgolf.cli import main
    assert main(["data", "stats", str(raw_val_folder / "fineweb_val_000000.bin"), "--tokenizer",
                 str(raw_val_folder / "tokenizer.model"), "--check-decode", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    plain = load_tokenizer(SP1024_MODEL)
    normalised = sum(int(stream_bytes(ids, byte_tables(plain)).sum()) for ids in encode_documents(plain, raw_val))
    original = sum(len(t.encode("utf-8")) for t in raw_val)
    assert out["text_transform"] == "caseops"
    assert out["bytes"] == normalised and out["sidecar_bytes"] == original
    assert out["sidecar_minus_bytes"] == original - normalised > 0
    assert out["decoded_utf8_bytes"] == normalised  # the inverse transform's text, where it succeeds


def test_the_validation_glob_never_loads_the_sidecar_as_tokens(raw_val_folder):
    """data.val_pattern's default fineweb_val_*.bin also matches fineweb_val_bytes_*.bin (#1855 drops them too)."""
    cfg = pgolf.load_recipe("baseline", overrides={"data.path": str(raw_val_folder), "data.text_transform": "caseops"})
    tokens, sidecar = validation_files(raw_val_folder, cfg.data)
    assert [p.name for p in tokens] == ["fineweb_val_000000.bin"]
    assert [p.name for p in sidecar] == ["fineweb_val_bytes_000000.bin"]
    assert resolve_dataset(cfg, progress=False).val_files == tokens


def test_caseops_data_must_be_declared(raw_val_folder, tmp_path):
    """meta.json's text_transform must match data.text_transform; without meta.json, the tokenizer's operator
    pieces make the plain byte rule refuse."""
    with pytest.raises(DataMismatchError, match="text_transform"):
        resolve_dataset(pgolf.load_recipe("baseline", overrides={"data.path": str(raw_val_folder)}), progress=False)
    bare = tmp_path / "bare"
    shutil.copytree(raw_val_folder, bare)
    (bare / "meta.json").unlink()
    cfg = pgolf.load_recipe("baseline", overrides={"data.path": str(bare)})
    with pytest.raises(TokenizerError, match=r"tokenizer.model: .*user-defined piece"):  # before any training
        resolve_dataset(cfg, progress=False)


def test_sidecar_must_belong_to_the_tokens(raw_val_folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(raw_val_folder, bad)
    counts = np.asarray(read_shard(bad / "fineweb_val_bytes_000000.bin")).copy()
    write_shard(bad / "fineweb_val_bytes_000000.bin", counts[:-1])
    cfg = pgolf.load_recipe("baseline", overrides={"data.path": str(bad), "data.text_transform": "caseops",
                                                   "data.byte_source": "sidecar"})
    with pytest.raises(ShardError, match="byte counts for the"):
        resolve_dataset(cfg, progress=False)


def test_bpb_over_a_caseops_stream_divides_by_the_chosen_bytes(raw_val_folder):
    """pgolf.evaluate with each byte source: the same nats, over the token rule's bytes (normalised text) or the
    sidecar's (original text), and the result's bytes are exactly those."""
    cfg = pgolf.load_recipe("baseline", scale="tiny", overrides={
        **MICRO, "data.path": str(raw_val_folder), "data.text_transform": "caseops"})
    pgolf.config.finalize(cfg)
    dataset = resolve_dataset(cfg, progress=False)
    tokens = np.asarray(read_shard(dataset.val_files[0]))[:3001]
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.bos_id)
    results = {}
    for source in ("tokens", "sidecar"):
        cfg.data.byte_source = source
        token_bytes = validation_bytes(dataset, cfg.data, tokens, cfg.model.vocab_size)
        results[source] = evaluate(model, tokens, None, cfg.eval, token_bytes=token_bytes)
    sidecar = np.asarray(read_shard(raw_val_folder / "fineweb_val_bytes_000000.bin"))[1:3001].astype(np.int64)
    sp = load_tokenizer(dataset.tokenizer_path)
    assert results["sidecar"].bytes == int(sidecar.sum())
    assert results["tokens"].bytes == int(stream_bytes(tokens, caseops.caseops_byte_tables(sp)).sum())
    for r in results.values():
        assert r.val_bpb == pytest.approx(float(np.sum(r.token_nll)) / math.log(2) / r.bytes, rel=1e-12)
    np.testing.assert_array_equal(results["tokens"].token_nll, results["sidecar"].token_nll)


@pytest.mark.slow
def test_training_on_caseops_data_reports_its_byte_source(raw_val_folder, tmp_path):
    """A tiny run on CaseOps shards scores with the sidecar when asked, says so in result.json, and `pgolf eval`
    rescores the artifact with the token rule (data.byte_source is a scoring key, not a model key)."""
    cfg = pgolf.load_recipe("baseline", scale="tiny", overrides={
        **MICRO, "data.path": str(raw_val_folder), "data.tokenizer": str(raw_val_folder / "tokenizer.model"),
        "data.text_transform": "caseops", "data.byte_source": "sidecar"})
    limit = cfg.data.val_tokens_limit
    result = pgolf.train(cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    counts = np.asarray(read_shard(raw_val_folder / "fineweb_val_bytes_000000.bin"))
    assert saved["byte_source"] == "sidecar" and saved["text_transform"] == "caseops"
    assert saved["val_bytes"] == int(counts[1:limit].sum()) == result["val_bytes"]
    from pgolf.cli.evaluate_artifact import evaluate_artifact
    again = evaluate_artifact(tmp_path / "run" / "artifact.pgolf", device="cpu", val_tokens=limit,
                              overrides={"data.byte_source": "tokens"})
    sp = load_tokenizer(raw_val_folder / "tokenizer.model")
    tokens = np.asarray(read_shard(raw_val_folder / "fineweb_val_000000.bin"))[:limit]
    assert again["byte_source"] == "tokens"
    assert again["val_bytes"] == int(stream_bytes(tokens, caseops.caseops_byte_tables(sp)).sum()) != saved["val_bytes"]
    assert again["val_bpb"] == pytest.approx(saved["val_bpb"] * saved["val_bytes"] / again["val_bytes"], rel=1e-9)
    with pytest.raises(ConfigError, match="would change the model"):
        evaluate_artifact(tmp_path / "run" / "artifact.pgolf", device="cpu", overrides={"data.text_transform": "none"})


def test_folder_stats_keeps_the_sidecar_out_of_the_token_stream(raw_val, raw_val_folder):
    """`pgolf data stats FOLDER`: the val glob also matches fineweb_val_bytes_*.bin; the sidecar is summed beside
    the token stream, never read as tokens."""
    from pgolf.data.stats import folder_stats
    out = folder_stats(raw_val_folder, raw_val_folder / "tokenizer.model")
    meta = json.loads((raw_val_folder / "meta.json").read_text())
    assert out["text_transform"] == "caseops"
    assert out["val"]["files"] == 1 and out["val"]["tokens"] == meta["val"]["tokens"]
    assert out["val"]["documents"] == 50
    assert out["val"]["sidecar_bytes"] == sum(len(t.encode("utf-8")) for t in raw_val)
    assert out["val"]["sidecar_minus_bytes"] == out["val"]["sidecar_bytes"] - out["val"]["bytes"] > 0


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_stats_in_chunks_carries_the_escape_state(caseops_sp, tmp_path, chunk):
    """Stats read a split a chunk at a time; a run of ESC tokens split by a chunk boundary must be credited as in
    one pass (an escaped ESC literal is 3 bytes, an escaping one 0)."""
    from pgolf.data import stats
    text = "x \ue004\ue004\ue004\ue001 Ab \ue004\ue004\ue004\ue004 NASA \ue001\ue002"
    ids = np.array([1] + caseops_sp.encode(caseops.encode(text)) + [1] + caseops_sp.encode(caseops.encode(text)))
    write_shard(tmp_path / "fineweb_val_000000.bin", ids)
    rule = stats._Rule(caseops_sp, "caseops")
    got = stats._stream_stats([tmp_path / "fineweb_val_000000.bin"], rule, 1, True, chunk=chunk)
    assert got["bytes"] == 2 * len(text.encode("utf-8")) == int(stream_bytes(ids, rule.tables).sum())
    assert got["decoded_utf8_bytes"] == got["bytes"] and got["caseops_inverse_failures"] == 0
