"""pgolf's byte tables against an independent implementation of the rule (tests/byte_rule.py), on every kind of
piece and every kind of predecessor, on the edge cases the FineWeb sample never shows (a word right after BOS,
unknown pieces, byte-fallback pieces that are not UTF-8, user-defined pieces), and on real data: per document,
the bytes equal the UTF-8 length of the decoded text.

Where the rule and the decoded text differ (unknown pieces decode to " ⁇ ", invalid byte sequences to U+FFFD),
the challenge counts the rule: its train_gpt.py builds exactly these lookup tables (build_sentencepiece_luts).
"""

from __future__ import annotations

import numpy as np
import pytest
import sentencepiece as spm
import torch

import pgolf
from pgolf.config import EvalConfig
from pgolf.data.dataset import resolve_dataset
from pgolf.data.shards import document_starts, read_shard
from pgolf.data.tokenizer import (CHALLENGE_TRAINER_SETTINGS, TokenizerError, byte_tables, load_tokenizer,
                                  piece_types, stream_bytes)

from byte_rule import RuleTokenizer, Type
from conftest import SHARED, SP1024_MODEL, VAL_SHARD

BOS, EOS, PAD, UNK = 1, 2, 0, 3
SAMPLES = {  # vocabulary -> (validation shard, tokenizer) of the shared FineWeb sample
    v: (SHARED / "datasets" / f"fineweb10B_sp{v}_sample" / "fineweb_val_000000.bin",
        SHARED / "tokenizers" / f"fineweb_{v}_bpe.model") for v in (1024, 4096, 8192)}
CASEOPS = SHARED / "tokenizers" / "alt" / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"


@pytest.fixture(scope="module")
def sp1024(shared_data):
    return load_tokenizer(SP1024_MODEL)


def decoded_length(sp, ids) -> int:
    return len(sp.decode([int(i) for i in ids]).encode("utf-8"))


# ----------------------------------------------------------------------------- every piece, every predecessor


def test_every_piece_after_every_kind_of_predecessor_counts_what_the_rule_says(sp1024):
    rule = RuleTokenizer(SP1024_MODEL)
    padded = 1100  # a model vocabulary larger than the tokenizer: ids 1024.. are 0-byte boundaries
    kinds = [int(i) for i in (PAD, BOS, EOS, UNK, sp1024.piece_to_id("<0x41>"), sp1024.piece_to_id("▁the"),
                              sp1024.piece_to_id("he"), 1050)]
    assert {rule.pieces[k][1] for k in kinds[:7]} == {Type.CONTROL, Type.UNKNOWN, Type.BYTE, Type.NORMAL}
    pairs = np.array([(p, t) for p in kinds for t in range(padded)]).ravel()  # ... p t p t ...: every (p, t) and (t, p)
    ours = stream_bytes(pairs, byte_tables(sp1024, padded))
    np.testing.assert_array_equal(ours, rule.stream_bytes(pairs))
    spaced = [t for t in range(1024) if rule.pieces[t][0].startswith("▁") and rule.pieces[t][1] == Type.NORMAL]
    assert len(spaced) > 100 and ours.sum() > 0  # the leading-space branch is exercised both ways


def test_piece_types_equal_protobufs_reading_of_every_shared_tokenizer(shared_data):
    models = sorted((SHARED / "tokenizers").rglob("*.model"))
    assert len(models) >= 4
    for path in models:
        sp = spm.SentencePieceProcessor(model_file=str(path))
        assert piece_types(sp).tolist() == [kind for _, kind in RuleTokenizer(path).pieces], path


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("boundary", [BOS, EOS, PAD, UNK])
def test_a_word_right_after_a_boundary_gets_no_space_byte(sp1024, boundary):
    the, cat = sp1024.piece_to_id("▁the"), sp1024.piece_to_id("▁c")
    tokens = [BOS, the, cat, boundary, the, cat]
    expected = [3, 2, 0, 3, 2]  # "the" (no space after BOS), " c", the boundary, "the" again without its space, " c"
    ours = stream_bytes(np.array(tokens), byte_tables(sp1024))
    assert ours.tolist() == expected == RuleTokenizer(SP1024_MODEL).stream_bytes(tokens).tolist()
    if boundary == BOS:  # per document, that is the decoded text: "the c" twice
        assert ours[:2].sum() == decoded_length(sp1024, tokens[1:3]) and ours[3:].sum() == decoded_length(sp1024, tokens[4:])


def test_an_unknown_piece_counts_zero_bytes_though_it_decodes_to_a_marker(sp1024):
    the = sp1024.piece_to_id("▁the")
    tokens = [BOS, the, UNK, the]
    ours = stream_bytes(np.array(tokens), byte_tables(sp1024))
    assert ours.tolist() == [3, 0, 3] == RuleTokenizer(SP1024_MODEL).stream_bytes(tokens).tolist()
    assert decoded_length(sp1024, tokens[1:]) == 3 + len(" ⁇ ".encode()) + 4  # what decoding would count instead


def test_byte_fallback_pieces_count_one_byte_each_even_when_they_are_not_utf8(sp1024):
    e2, x82, xac = (sp1024.piece_to_id(f"<0x{b:02X}>") for b in (0xE2, 0x82, 0xAC))
    tables = byte_tables(sp1024)
    euro = [BOS, e2, x82, xac]  # "€" = E2 82 AC
    assert stream_bytes(np.array(euro), tables).sum() == 3 == decoded_length(sp1024, euro[1:])
    broken = [BOS, e2, x82]  # a truncated sequence: decodes to two U+FFFD (6 bytes), the rule counts 2
    assert stream_bytes(np.array(broken), tables).tolist() == [1, 1] == RuleTokenizer(SP1024_MODEL).stream_bytes(broken).tolist()
    assert decoded_length(sp1024, broken[1:]) == 6


# ----------------------------------------------------------------------------- user-defined pieces


@pytest.fixture(scope="module")
def with_operators(tmp_path_factory):
    """A small challenge-style tokenizer with two user-defined pieces: an ASCII tag and a CaseOps-style operator."""
    prefix = tmp_path_factory.mktemp("tok") / "ops"
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "cloud"]
    texts = [" ".join(words[(i * k) % 8] for k in range(1, 9)) + f" <op> \ue0ffWord {i}." for i in range(300)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(prefix), vocab_size=320,
                                   minloglevel=2, user_defined_symbols=["<op>", "\ue0ff"], **CHALLENGE_TRAINER_SETTINGS)
    sp = load_tokenizer(prefix.with_suffix(".model"))
    ops = {sp.piece_to_id("<op>"), sp.piece_to_id("\ue0ff")}
    assert {int(i) for i in np.flatnonzero(piece_types(sp) == Type.USER_DEFINED)} == ops
    return prefix.with_suffix(".model"), sp, sorted(ops)


def test_user_defined_pieces_are_refused_unless_their_bytes_are_given(with_operators):
    path, sp, ops = with_operators
    with pytest.raises(TokenizerError, match=r"2 user-defined piece\(s\).*'<op>'.*user_defined_bytes"):
        byte_tables(sp)
    text = "alpha <op> \ue0ffRiver"
    tokens = np.array([BOS] + sp.encode(text))
    assert set(ops) <= set(tokens.tolist())
    # "text": each counts as its UTF-8 length, which is what they decode to
    as_text = stream_bytes(tokens, byte_tables(sp, user_defined_bytes="text"))
    assert as_text.tolist() == RuleTokenizer(path).stream_bytes(tokens).tolist()
    assert as_text.sum() == decoded_length(sp, tokens[1:]) == len(text.encode())
    # a sidecar: CaseOps operators stand for no bytes of the original text
    zero = {i: 0 for i in ops}
    sidecar = stream_bytes(tokens, byte_tables(sp, user_defined_bytes=zero))
    assert sidecar.tolist() == RuleTokenizer(path, zero).stream_bytes(tokens).tolist()
    assert as_text.sum() - sidecar.sum() == len("<op>") + len("\ue0ff".encode())
    for bad, match in [({ops[0]: 0}, f"id {ops[1]} is missing"), ({**zero, 40: 0}, "id 40 is not user-defined"),
                       ({ops[0]: 0, ops[1]: -1}, "integer >= 0"), ("zero", "a mapping")]:
        with pytest.raises(TokenizerError, match=match):
            byte_tables(sp, user_defined_bytes=bad)


def test_evaluation_refuses_a_tokenizer_with_user_defined_pieces(with_operators):
    path, sp, _ = with_operators
    tokens = np.array([BOS] + sp.encode("alpha <op> beta"))
    with pytest.raises(TokenizerError, match="user-defined"):  # before any scoring: no model needed
        pgolf.evaluate(torch.nn.Identity(), tokens, str(path), EvalConfig(context_len=16))


def test_the_caseops_tokenizer_is_refused(shared_data):
    assert CASEOPS.is_file(), f"the shared data lost {CASEOPS}"
    with pytest.raises(TokenizerError, match=r"4 user-defined piece.*\\ue001"):
        byte_tables(load_tokenizer(CASEOPS))


# ----------------------------------------------------------------------------- real data


@pytest.mark.parametrize("vocab", sorted(SAMPLES))
def test_bytes_of_every_document_equal_its_decoded_text(shared_data, vocab):
    shard, model = SAMPLES[vocab]
    sp = load_tokenizer(model)
    tokens = np.asarray(read_shard(shard, int(sp.vocab_size())), dtype=np.int64)
    ours = stream_bytes(tokens, byte_tables(sp))
    np.testing.assert_array_equal(ours, RuleTokenizer(model).stream_bytes(tokens))
    starts = document_starts(tokens, BOS).tolist()
    assert len(starts) == 600 and starts[0] == 0
    for a, b in zip(starts, starts[1:] + [tokens.size]):
        # document a..b: its targets are tokens a+1 .. b (the next BOS, 0 bytes); ours[i] is target tokens[i + 1]
        assert ours[a:b].sum() == decoded_length(sp, tokens[a + 1 : b]), f"sp{vocab} document at token {a}"
    assert ours.sum() == 1_634_550  # the same 600 documents in every vocabulary


def test_training_refuses_such_a_tokenizer_before_it_starts(with_operators, synthetic_shards):
    path, _, _ = with_operators
    cfg = pgolf.load_recipe("tiny", overrides={"data.path": str(synthetic_shards), "data.tokenizer": str(path)})
    with pytest.raises(TokenizerError, match=f"{path.name}: the tokenizer has 2 user-defined"):
        resolve_dataset(cfg)
