"""`pgolf data download` against a local stand-in for the Hugging Face Hub (tests/fake_hub.py): no network.

The served export is the challenge's layout with real files: the official sp1024 tokenizer, the first 600 documents
of the official validation shard, the 200-document training sample cut into 3 shards, a byte260 variant of the same
validation text, and docs_selected.jsonl (those 800 documents) with its sidecar. The manifest's figures are the
ones shared/data/README.md states for those files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants as hf_constants

from pgolf.cli import main
from pgolf.data.download import DownloadError, download
from pgolf.data.docs import prepare_file
from pgolf.data.stats import folder_stats

from conftest import (BYTE260_JSON, REPO, SHARED, SP1024_DIR, SP1024_MODEL, VAL_DOCS_BYTES, VAL_DOCS_JSONL,
                      VAL_SHARD)
from fake_hub import FakeHub

SP = "datasets/fineweb10B_sp1024"
BYTE = "datasets/fineweb10B_byte260"
TRAIN_CUTS = (0, 250_000, 500_000, 628_457)  # the 628,457-token training sample as 3 shards
SP_FIGURES = {"files_val": 1, "docs_val": 600, "tokens_val": 680_037,
              "files_train": 3, "docs_train": 200, "tokens_train": 628_457}


def shard_bytes(tokens: np.ndarray) -> bytes:
    """The challenge's shard format, written out by hand: 256 int32 header (magic, version, count), uint16 tokens."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, tokens.size)
    return header.tobytes() + tokens.astype("<u2").tobytes()


@pytest.fixture(scope="module")
def export(shared_data) -> dict[str, bytes]:
    """The files of a challenge export, keyed by their path inside the export root."""
    val_texts = [json.loads(line)["text"] for line in VAL_DOCS_JSONL.read_text().splitlines()]
    train_texts = [json.loads(line)["text"] for line in (SHARED / "fineweb" / "docs_sample_200.jsonl").read_text().splitlines()]
    train = np.fromfile(SP1024_DIR / "fineweb_train_000000.bin", dtype="<u2", offset=1024)
    assert train.size == TRAIN_CUTS[-1]
    byte_val = np.concatenate([np.concatenate(([1], np.frombuffer(t.encode(), np.uint8) + 4)) for t in val_texts])
    docs = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in val_texts + train_texts).encode()
    sidecar = {"selection_seed": 1337, "num_val_docs": 600, "num_docs": 800, "docs_val": 600, "docs_train": 200,
               "docs_bytes": len(docs), "docs_sha256": hashlib.sha256(docs).hexdigest()}
    manifest = {
        "version": "10B", "num_docs": 800, "num_val_docs": 600, "shard_size": 250_000, "append_eos": False,
        "tokenizers": [
            {"name": "sp_bpe_1024", "kind": "sentencepiece_bpe", "vocab_size": 1024, "bos_id": 1, "eos_id": 2,
             "model_path": "tokenizers/fineweb_1024_bpe.model", "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"},
            {"name": "pure_byte_260", "kind": "byte", "vocab_size": 260, "bos_id": 1, "eos_id": 2,
             "path": "tokenizers/fineweb_pure_byte_260.json", "pad_id": 0, "unk_id": 3}],
        "datasets": [
            {"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024", "path": SP, "vocab_size": 1024,
             "stats": {**SP_FIGURES, "docs_total": 800, "files_total": 4, "tokens_total": 1_308_494}},
            {"name": "fineweb10B_byte260", "tokenizer_name": "pure_byte_260", "path": BYTE, "vocab_size": 260,
             "stats": {"files_val": 1, "docs_val": 600, "tokens_val": 600 + VAL_DOCS_BYTES, "files_train": 0,
                       "docs_train": 0, "tokens_train": 0}}],
    }
    files = {
        "manifest.json": json.dumps(manifest, indent=2).encode(),
        "docs_selected.jsonl": docs,
        "docs_selected.source_manifest.json": json.dumps(sidecar, indent=2).encode(),
        "tokenizers/fineweb_1024_bpe.model": SP1024_MODEL.read_bytes(),
        "tokenizers/fineweb_1024_bpe.vocab": SP1024_MODEL.with_suffix(".vocab").read_bytes(),
        "tokenizers/fineweb_pure_byte_260.json": BYTE260_JSON.encode(),
        f"{SP}/fineweb_val_000000.bin": VAL_SHARD.read_bytes(),
        f"{BYTE}/fineweb_val_000000.bin": shard_bytes(byte_val),
    }
    for i, (a, b) in enumerate(zip(TRAIN_CUTS[:-1], TRAIN_CUTS[1:])):
        files[f"{SP}/fineweb_train_{i:06d}.bin"] = shard_bytes(train[a:b])
    return files


def _rooted(files: dict[str, bytes], root: str) -> dict[str, bytes]:
    return {f"{root}/{k}" if root else k: v for k, v in files.items()}


@pytest.fixture(scope="module")
def hub(export):
    bad_sidecar = json.loads(export["docs_selected.source_manifest.json"])
    bad_sidecar["docs_sha256"] = "0" * 64
    holes = {k: v for k, v in export.items() if not k.endswith("fineweb_train_000002.bin")}
    with FakeHub() as server:
        server.add_repo("test/pg", _rooted(export, "datasets"))
        server.add_repo("test/mirror", _rooted(export, "export_v2"))
        server.add_repo("test/baddocs", _rooted({**export, "docs_selected.source_manifest.json":
                                                 json.dumps(bad_sidecar).encode()}, "datasets"))
        server.add_repo("test/holes", _rooted(holes, "datasets"))
        yield server


@pytest.fixture(autouse=True)
def clean(request, monkeypatch):
    """No MATCHED_FINEWEB_* from the caller's shell; the server's log and faults start empty for each test."""
    monkeypatch.delenv("MATCHED_FINEWEB_REPO_ID", raising=False)
    monkeypatch.delenv("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", raising=False)
    if "hub" in request.fixturenames:
        server = request.getfixturevalue("hub")
        server.requests.clear()
        server.drop_once.clear()
        server.on_drop = None


def fetch(hub: FakeHub, tmp_path: Path, variant: str = "sp1024", train_shards: int = 3, **kwargs) -> dict:
    kwargs.setdefault("repo_id", "test/pg")
    return download(variant, train_shards, tmp_path / "data", endpoint=hub.url, cache_dir=str(tmp_path / "hf"),
                    progress=False, **kwargs)


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- what is fetched

def test_only_the_requested_prefix_of_training_shards_is_fetched(hub, export, tmp_path):
    info = fetch(hub, tmp_path, train_shards=2)
    wanted = {"manifest.json", f"{SP}/fineweb_val_000000.bin", f"{SP}/fineweb_train_000000.bin",
              f"{SP}/fineweb_train_000001.bin", "tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.vocab"}
    assert files_under(tmp_path / "data") == wanted  # the official layout under the output root, nothing else
    for rel in wanted:
        assert (tmp_path / "data" / rel).read_bytes() == export[rel]
        assert hub.count("GET", f"/datasets/{rel}") == 1
    assert hub.count("GET", "fineweb_train_000002.bin") == 0 and hub.count("HEAD", "fineweb_train_000002.bin") == 0
    assert info["fetched"] == 6 and info["data"] == str(tmp_path / "data" / SP)
    assert info["tokenizer"] == str(tmp_path / "data" / "tokenizers" / "fineweb_1024_bpe.model")


def test_a_second_run_fetches_nothing_even_with_the_hub_cache_gone(hub, tmp_path):
    fetch(hub, tmp_path)
    shutil.rmtree(tmp_path / "hf")  # the hard links keep the data; only the files under data/ are left
    hub.requests.clear()
    info = fetch(hub, tmp_path)
    assert hub.resolve_requests() == []
    assert info["fetched"] == 0 and info["present"] == 7 and info["bytes_fetched"] == 0


def test_files_are_hard_links_to_the_cache_blobs(hub, export, tmp_path):
    info = fetch(hub, tmp_path)
    assert info["linked"] == 7 and info["copied"] == 0
    blobs = tmp_path / "hf" / "datasets--test--pg" / "blobs"
    for rel in files_under(tmp_path / "data"):
        blob = blobs / hashlib.sha256(export[rel]).hexdigest()  # the Hub's ETag names the blob
        assert os.stat(tmp_path / "data" / rel).st_ino == os.stat(blob).st_ino, rel


def test_without_hard_links_files_are_copied(hub, export, tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", refuse)
    info = fetch(hub, tmp_path, train_shards=1)
    assert info["copied"] == 5 and info["linked"] == 0
    blob = tmp_path / "hf" / "datasets--test--pg" / "blobs" / hashlib.sha256(export[f"{SP}/fineweb_val_000000.bin"]).hexdigest()
    assert os.stat(tmp_path / "data" / SP / "fineweb_val_000000.bin").st_ino != os.stat(blob).st_ino
    assert (tmp_path / "data" / SP / "fineweb_val_000000.bin").read_bytes() == export[f"{SP}/fineweb_val_000000.bin"]


def test_a_dropped_connection_resumes_and_no_partial_file_appears(hub, export, tmp_path, monkeypatch):
    rel = f"{SP}/fineweb_train_000001.bin"
    dest = tmp_path / "data" / rel
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)  # resume points every 64 KiB, not 10 MiB
    at_drop = {}
    hub.drop_once[f"datasets/{rel}"] = 300_000
    hub.on_drop = lambda path: at_drop.update(final_name_exists=dest.exists())
    fetch(hub, tmp_path)
    gets = [r for r in hub.requests if r[0] == "GET" and r[1].endswith(rel)]
    assert len(gets) == 2 and gets[0][2] is None
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", gets[1][2])[1])
    assert 0 < resumed_at <= 300_000  # picked up where the data stopped, not from the start
    assert at_drop == {"final_name_exists": False}
    assert dest.read_bytes() == export[rel]
    assert len(files_under(tmp_path / "data")) == 7  # no temporary or partial file left beside the shards


def test_an_interrupted_copy_leaves_nothing_under_the_final_name(hub, export, tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(18, "Invalid cross-device link")

    def half_then_disk_full(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[: os.path.getsize(src) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(shutil, "copyfile", half_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        fetch(hub, tmp_path, train_shards=1)
    assert files_under(tmp_path / "data") == set()
    monkeypatch.undo()
    monkeypatch.setattr(os, "link", refuse)
    assert fetch(hub, tmp_path, train_shards=1)["copied"] == 5
    assert (tmp_path / "data" / "manifest.json").read_bytes() == export["manifest.json"]


def test_offline_with_every_file_in_place_succeeds_and_says_so(hub, tmp_path):
    fetch(hub, tmp_path)
    info = download("sp1024", 3, tmp_path / "data", repo_id="test/pg", endpoint=_closed_port(),
                    cache_dir=str(tmp_path / "hf"), progress=False)
    assert "ConnectError" in info["offline"] and not info["sizes_checked"]
    assert (info["fetched"], info["present"]) == (0, 7)


def test_the_official_environment_variables_choose_repo_and_export_root(hub, export, tmp_path, monkeypatch):
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "test/mirror")
    monkeypatch.setenv("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "export_v2")
    info = fetch(hub, tmp_path, train_shards=1, repo_id=None)
    assert info["repo"] == "test/mirror" and info["remote_root"] == "export_v2"
    assert all(r[1].startswith("/datasets/test/mirror/resolve/") and "/export_v2/" in r[1] for r in hub.resolve_requests())
    assert (tmp_path / "data" / SP / "fineweb_train_000000.bin").read_bytes() == export[f"{SP}/fineweb_train_000000.bin"]


# ----------------------------------------------------------------------------- stats against the manifest

def test_stats_of_the_download_match_the_manifest(hub, tmp_path, capsys):
    fetch(hub, tmp_path)
    data = tmp_path / "data"
    assert main(["data", "stats", str(data / SP), "--tokenizer", str(data / "tokenizers/fineweb_1024_bpe.model"),
                 "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["manifest"]["checked"] == ["files_val", "docs_val", "tokens_val", "files_train", "docs_train",
                                            "tokens_train"]
    assert (stats["val"]["files"], stats["val"]["documents"], stats["val"]["tokens"]) == (1, 600, 680_037)
    assert (stats["train"]["files"], stats["train"]["documents"], stats["train"]["tokens"]) == (3, 200, 628_457)
    assert stats["val"]["bytes"] == VAL_DOCS_BYTES and stats["train"]["bytes"] == 1_489_418


def test_stats_refuse_a_folder_the_manifest_does_not_describe(hub, tmp_path, capsys):
    fetch(hub, tmp_path, train_shards=2)
    data = tmp_path / "data"
    tok = str(data / "tokenizers/fineweb_1024_bpe.model")
    prefix = folder_stats(data / SP, tok)
    assert prefix["manifest"]["checked"] == ["files_val", "docs_val", "tokens_val"] and prefix["manifest"]["train_prefix"]
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["datasets"][0]["stats"]["tokens_val"] += 1
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert main(["data", "stats", str(data / SP), "--tokenizer", tok]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokens_val 680,037 here vs 680,038 in the manifest" in err[0]


def test_byte260_variant_downloads_its_json_tokenizer_and_counts_exact_bytes(hub, tmp_path):
    info = fetch(hub, tmp_path, variant="byte260", train_shards=0)
    tok = tmp_path / "data" / "tokenizers" / "fineweb_pure_byte_260.json"
    assert info["tokenizer"] == str(tok) and tok.read_text() == BYTE260_JSON
    stats = folder_stats(tmp_path / "data" / BYTE, tok, check_decode=True)
    assert stats["val"]["bytes"] == VAL_DOCS_BYTES == stats["val"]["decoded_utf8_bytes"]
    assert stats["val"]["tokens"] == 600 + VAL_DOCS_BYTES and stats["manifest"]["checked"][:3] == ["files_val", "docs_val",
                                                                                             "tokens_val"]


# ----------------------------------------------------------------------------- the documents

def test_with_docs_then_prepare_reproduces_the_export(hub, export, tmp_path):
    info = fetch(hub, tmp_path, train_shards=0, with_docs=True)
    data = tmp_path / "data"
    assert info["docs"] == str(data / "docs_selected.jsonl")
    assert (data / "docs_selected.jsonl").read_bytes() == export["docs_selected.jsonl"]
    meta = prepare_file(data / "docs_selected.jsonl", tmp_path / "mine", tokenizer=data / "tokenizers/fineweb_1024_bpe.model",
                        progress=False)  # validation = the sidecar's docs_val (600)
    assert meta["docs"]["checked"] == ["docs_sha256", "docs_bytes", "num_docs"]
    assert (tmp_path / "mine" / "fineweb_val_000000.bin").read_bytes() == VAL_SHARD.read_bytes()
    assert (tmp_path / "mine" / "fineweb_train_000000.bin").read_bytes() == (SP1024_DIR / "fineweb_train_000000.bin").read_bytes()


def test_docs_whose_sha256_disagrees_with_the_sidecar_are_not_placed(hub, export, tmp_path):
    with pytest.raises(DownloadError) as info:
        fetch(hub, tmp_path, train_shards=0, with_docs=True, repo_id="test/baddocs")
    message = str(info.value)
    real = hashlib.sha256(export["docs_selected.jsonl"]).hexdigest()
    assert "\n" not in message and f"docs_sha256 is {real} here but {'0' * 64} in the sidecar" in message
    assert not (tmp_path / "data" / "docs_selected.jsonl").exists()
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- one clear line per error

@pytest.fixture
def cli_hub(hub, tmp_path, monkeypatch):
    """huggingface_hub's import-time settings pointed at the local Hub, for in-process CLI runs."""
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "test/pg")
    return hub


def _closed_port() -> str:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("case, args, expected", [
    ("unknown variant", ["--variant", "gpt2"], "unknown variant 'gpt2': expected byte260 or sp<vocab size>"),
    ("no manifest entry", ["--variant", "sp4096"],
     "manifest.json: no dataset named fineweb10B_sp4096 (variant sp4096); it lists: fineweb10B_sp1024, fineweb10B_byte260"),
    ("too many shards", ["--train-shards", "4"], "sp1024 has 3 training shards on test/pg, but --train-shards asks for 4"),
    ("local size differs", ["--train-shards", "2"],
     "fineweb_train_000001.bin: 10 bytes here, but test/pg has 501,024 bytes for "
     "datasets/datasets/fineweb10B_sp1024/fineweb_train_000001.bin"),
    ("offline", ["--train-shards", "1"], "offline: cannot reach the Hugging Face Hub at http://127.0.0.1:"),
    ("file missing on the Hub", ["--repo-id", "test/holes", "--train-shards", "3"], "has no datasets/datasets/fineweb10B_sp1024/fineweb_train_000002.bin"),
    ("--skip-manifest without one", ["--skip-manifest"], "--skip-manifest: "),
])
def test_each_error_is_one_line_naming_what_is_wrong(cli_hub, tmp_path, capsys, monkeypatch, case, args, expected):
    out = tmp_path / "data"
    if case == "local size differs":
        (out / SP).mkdir(parents=True)
        (out / SP / "fineweb_train_000001.bin").write_bytes(b"0123456789")
    if case == "offline":
        url = _closed_port()
        monkeypatch.setattr(hf_constants, "ENDPOINT", url)
        monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    assert main(["data", "download", "--out", str(out), "--quiet", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgolf: error: "), captured.err
    assert expected in lines[0]
    assert not [r for r in cli_hub.requests if r[0] == "GET" and r[1].endswith(".bin")]  # refused before any shard


def test_the_cli_reads_the_hub_settings_from_the_environment(hub, export, tmp_path):
    """End to end in fresh processes: HF_ENDPOINT / HF_HOME / MATCHED_FINEWEB_* as a user sets them, and
    HF_HUB_OFFLINE=1 (all read by huggingface_hub when it is imported)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MATCHED_FINEWEB_", "HUGGINGFACE"))}
    env.update(PYTHONPATH=str(REPO / "src"), HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hfhome"),
               MATCHED_FINEWEB_REPO_ID="test/mirror", MATCHED_FINEWEB_REMOTE_ROOT_PREFIX="export_v2",
               HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pgolf", "data", "download", "--train-shards", "1", "--quiet"]
    online = subprocess.Popen(cmd + ["--out", str(tmp_path / "a")], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    offline = subprocess.Popen(cmd + ["--out", str(tmp_path / "b")], env={**env, "HF_HUB_OFFLINE": "1"}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out_a, err_a = online.communicate(timeout=120)
    out_b, err_b = offline.communicate(timeout=120)
    assert online.returncode == 0, err_a
    assert "5 file(s) fetched from test/mirror@" in out_a
    assert (tmp_path / "a" / SP / "fineweb_train_000000.bin").read_bytes() == export[f"{SP}/fineweb_train_000000.bin"]
    assert (tmp_path / "hfhome" / "hub" / "datasets--test--mirror").is_dir()  # HF_HOME's cache was used
    assert offline.returncode == 2
    lines = err_b.strip().splitlines()
    assert len(lines) == 1 and "offline: cannot reach the Hugging Face Hub" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
