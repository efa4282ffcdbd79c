"""Fault suite (issue #9): damaged or bad input is rejected with an error naming the file/key/region, never loaded
or trained on silently; faults during training (NaN, SIGTERM, full disk, a dead rank) lose nothing already made.

Tests are grouped by category in classes (Artifacts, Data, Mismatch, Config, Training, Writes, Distributed);
`benchmarks/faults.py` runs this file and tabulates cases tried / passed per class. Artifact tests record how many
corrupted files they tried (`corruptions`) and how many loaded anyway (`silent_loads`, always 0) as properties.
"""

from __future__ import annotations

import errno
import hashlib
import json
import lzma
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import brotli
import numpy as np
import pytest
import torch
import zstandard
from safetensors.torch import load_file

import pgolf
from pgolf.cli import main as cli_main
from pgolf.config import ConfigError
from pgolf.data.dataset import DataMismatchError
from pgolf.data.shards import HEADER_BYTES, ShardError, read_shard, write_shard
from pgolf.data.tokenizer import TokenizerError
from pgolf.model.gpt import GPT
from pgolf.optim.groups import build_optimizers
from pgolf.quant.container import MAGIC, TRAILER, ArtifactError
from pgolf.quant.layout import artifact_layout, layout_parts
from pgolf.training import loop as trainer_module
from pgolf.training.checkpoint import CheckpointError, checkpoint_dir, load_checkpoint, save_checkpoint
from pgolf.training.loop import TrainingDiverged, TrainingInterrupted
from pgolf.training.runs import LogWriter, read_log, save_config, write_json

from conftest import REPO, SHARED, SP1024_DIR, SP1024_MODEL, micro_config, need_shared_data, random_stream
from test_model import SMALL, small_model

# ============================================================================ helpers


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The suite's tiny matrices gain nothing from 2 intra-op threads, and on a shared, oversubscribed CPU the
    second thread's wake-ups make each small matmul ~1000x slower; restored afterwards for the other files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def artifact_cfg(**quant):
    """The small model of test_model with every matrix int8-quantized (codes + scales parts)."""
    over = {**SMALL, "quant.passthrough_max_numel": 256, "quant.allow_over_budget": True,
            **{f"quant.{k}": v for k, v in quant.items()}}
    return pgolf.load_recipe("baseline", overrides=over)


def write_artifact(path: Path, seed: int = 0, **quant) -> Path:
    pgolf.pack(small_model({}, seed=seed), artifact_cfg(**quant), path)
    return path


# The container format, written out here from its specification (quant/container.py's docstring) so that the
# reader is tested against an independent writer: fixed fields of the header, then brotli(JSON), then checks.
FIXED = struct.Struct("<BBII32s")  # payload compressor id, flags, JSON length, compressed JSON length, payload sha256
COMPRESSOR_ID = {"none": 0, "zlib": 1, "lzma": 2, "zstd": 3, "brotli": 4}


@dataclass
class Parsed:
    header_len: int
    compressor: int
    flags: int
    header: dict
    checks: bytes
    payload: bytes

    @property
    def payload_start(self) -> int:
        return 12 + self.header_len + 32


def parse(blob: bytes) -> Parsed:
    header_len = struct.unpack("<I", blob[8:12])[0]
    head = blob[12 : 12 + header_len]
    compressor, flags, _, packed_len, _ = FIXED.unpack_from(head)
    header = json.loads(brotli.decompress(head[FIXED.size : FIXED.size + packed_len]))
    return Parsed(header_len, compressor, flags, header, head[FIXED.size + packed_len :], blob[44 + header_len : -40])


def build(header: object, payload: bytes, checks: bytes, compressor: int = 0, flags: int = 0,
          text: bytes | None = None, packed: bytes | None = None, json_len: int | None = None) -> bytes:
    """An artifact whose every checksum is right for the given (possibly ill-formed) fields."""
    text = json.dumps(header).encode() if text is None else text
    packed = brotli.compress(text) if packed is None else packed
    head = FIXED.pack(compressor, flags, len(text) if json_len is None else json_len, len(packed),
                      hashlib.sha256(payload).digest()) + packed + checks
    blob = MAGIC + struct.pack("<I", len(head)) + head
    blob += hashlib.sha256(blob[8:]).digest() + payload
    return blob + hashlib.sha256(blob).digest() + TRAILER


def rebuilt(p: Parsed, **changes) -> bytes:
    fields = {"header": p.header, "payload": p.payload, "checks": p.checks, "compressor": p.compressor,
              "flags": p.flags, **changes}
    return build(**fields)


def flipped(blob: bytes, offset: int) -> bytes:
    data = bytearray(blob)
    data[offset] ^= 0x5A
    return bytes(data)


class Rejections:
    """Writes each damaged version, loads it with pgolf.unpack, and requires an ArtifactError naming file + region."""

    def __init__(self, path: Path, record_property):
        self.path, self.tried, self.silent = path, 0, 0
        self.record = record_property

    def check(self, blob: bytes, region: str) -> ArtifactError:
        self.path.write_bytes(blob)
        self.tried += 1
        try:
            pgolf.unpack(self.path)
        except ArtifactError as exc:
            message = str(exc)
            assert message.startswith(f"{self.path}: "), message
            assert re_search(region, message), f"expected region {region!r}, got: {message}"
            return exc
        self.silent += 1
        raise AssertionError(f"damaged artifact loaded silently (expected a {region} error)")

    def done(self) -> None:
        self.record("corruptions", self.tried)
        self.record("silent_loads", self.silent)


def re_search(pattern: str, text: str) -> bool:
    import re
    return re.search(pattern, text) is not None


@pytest.fixture
def rejections(tmp_path, record_property):
    r = Rejections(tmp_path / "damaged.pgolf", record_property)
    yield r
    r.done()


def _part_spans() -> list[tuple[str, str, int, int]]:
    """(tensor, kind, offset, bytes) of every part of the small artifact, from the config's layout, computed at
    collection so each is its own case."""
    spans, offset = [], 0
    for part in layout_parts(artifact_layout(artifact_cfg(compressor="none"))):
        spans.append((part.tensor, part.kind, offset, part.nbytes))
        offset += part.nbytes
    return [s for s in spans if s[3]]


PARTS = _part_spans()


@pytest.fixture(scope="module")
def plain_artifact(tmp_path_factory) -> bytes:
    """A compressor='none' artifact: every tensor part is its own byte range of the file."""
    path = write_artifact(tmp_path_factory.mktemp("plain") / "a.pgolf", compressor="none")
    return path.read_bytes()


# ---------------------------------------------------------------------------- data helpers

VOCAB = 1024


def data_folder(root: Path, train_shards: int = 2) -> Path:
    folder = root / "data"
    for i in range(train_shards):
        write_shard(folder / f"fineweb_train_{i:06d}.bin", random_stream(6_000, VOCAB, seed=10 + i))
    write_shard(folder / "fineweb_val_000000.bin", random_stream(3_000, VOCAB, seed=2))
    return folder


def put_int32(path: Path, index: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    data[4 * index : 4 * index + 4] = struct.pack("<i", value)
    path.write_bytes(bytes(data))


def put_token(path: Path, position: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    data[HEADER_BYTES + 2 * position : HEADER_BYTES + 2 * position + 2] = struct.pack("<H", value)
    path.write_bytes(bytes(data))


class StepSpy:
    """A step_callback that records the steps it sees: training never started if it saw none."""

    def __init__(self):
        self.steps: list[int] = []

    def __call__(self, step: int, info: dict) -> None:
        self.steps.append(step)


def assert_no_training(spy: StepSpy, run_dir: Path) -> None:
    assert spy.steps == [], f"training ran {len(spy.steps)} steps before the error"
    steps = [r for r in read_log(run_dir / "log.jsonl") if "train_loss" in r]
    assert steps == [], "log.jsonl has step lines: training started"
    assert not (run_dir / "checkpoint").exists() and not (run_dir / "artifact.pgolf").exists()


FAST = {"data__val_tokens_limit": 1025}


def fast_config(**overrides) -> pgolf.Config:
    """conftest's micro run (6 steps on the FineWeb sample), scoring only 1,024 validation targets."""
    return micro_config(**{**FAST, **overrides})


# ============================================================================ artifacts


def _config(p: Parsed, **model) -> dict:
    header = json.loads(json.dumps(p.header))
    header["config"]["model"].update(model)
    return header


def _nested(depth: int) -> bytes:
    return b'{"config": {}, "x": ' + b"[" * depth + b"]" * depth + b"}"


def _long_json_field(p: Parsed) -> bytes:
    """A header whose compressed-JSON length field points past the end of the header."""
    blob = bytearray(rebuilt(p))
    header_len = struct.unpack("<I", blob[8:12])[0]
    blob[12 + 6 : 12 + 10] = struct.pack("<I", header_len)  # compressed JSON as long as the whole header
    head = bytes(blob[8 : 12 + header_len])
    blob[12 + header_len : 44 + header_len] = hashlib.sha256(head).digest()
    blob[-40:-8] = hashlib.sha256(bytes(blob[:-40])).digest()
    return bytes(blob)


class TestArtifacts:
    REGIONS = [  # (what, offset as a function of (H, size), region the error must name)
        ("magic first byte", lambda h, n: 0, "preamble"),
        ("magic last byte (format version)", lambda h, n: 7, "preamble"),
        ("header length, low byte", lambda h, n: 8, "preamble|header"),
        ("header length, high byte", lambda h, n: 11, "preamble"),
        ("header, payload compressor id", lambda h, n: 12, "header"),
        ("header, payload checksum field", lambda h, n: 30, "header"),
        ("header JSON, first byte", lambda h, n: 12 + FIXED.size, "header"),
        ("header, middle", lambda h, n: 12 + h // 2, "header"),
        ("header, last part check", lambda h, n: 12 + h - 1, "header"),
        ("header checksum, first byte", lambda h, n: 12 + h, "header"),
        ("header checksum, last byte", lambda h, n: 12 + h + 31, "header"),
        ("file checksum, first byte", lambda h, n: n - 40, "checksum"),
        ("file checksum, last byte", lambda h, n: n - 9, "checksum"),
        ("trailer, first byte", lambda h, n: n - 8, "trailer"),
        ("trailer, last byte", lambda h, n: n - 1, "trailer"),
    ]

    @pytest.mark.parametrize("what, offset, region", REGIONS, ids=[r[0] for r in REGIONS])
    def test_flip_in_region_is_rejected_naming_it(self, plain_artifact, rejections, what, offset, region):
        header_len = parse(plain_artifact).header_len
        rejections.check(flipped(plain_artifact, offset(header_len, len(plain_artifact))), region)

    @pytest.mark.parametrize("tensor, kind, offset, nbytes", PARTS, ids=[f"{t}/{k}" for t, k, _, _ in PARTS])
    def test_flip_in_each_tensor_part_names_the_tensor(self, plain_artifact, rejections, tensor, kind, offset, nbytes):
        first = parse(plain_artifact).payload_start + offset
        for at in sorted({first, first + nbytes // 2, first + nbytes - 1}):
            exc = rejections.check(flipped(plain_artifact, at), "payload")
            assert f"payload of tensor '{tensor}' ({kind})" in str(exc)

    @pytest.mark.parametrize("compressor, shuffle", [("zlib", False), ("lzma", False), ("zstd", False),
                                                     ("brotli", False), ("zstd", True)])
    def test_flips_in_a_compressed_payload_are_rejected_as_payload(self, tmp_path, rejections, compressor, shuffle):
        blob = write_artifact(tmp_path / "c.pgolf", compressor=compressor, byte_shuffle=shuffle).read_bytes()
        p = parse(blob)
        assert p.compressor == COMPRESSOR_ID[compressor] and p.flags == int(shuffle)
        size = len(p.payload)
        rng = np.random.default_rng(0)
        offsets = {0, 1, 2, 3, 4, 5, 6, 7, size // 2, size - 4, size - 1} | set(rng.integers(0, size, 40).tolist())
        for offset in sorted(offsets):
            rejections.check(flipped(blob, p.payload_start + offset), "payload")

    def test_truncation_at_every_region_is_rejected(self, plain_artifact, rejections):
        p = parse(plain_artifact)
        size = len(plain_artifact)
        cuts = [0, 1, 8, 12, 43, 44, 12 + p.header_len // 2, p.payload_start, p.payload_start + len(p.payload) // 2,
                size - 40, size - 9, size - 8, size - 1]
        for cut in cuts:
            exc = rejections.check(plain_artifact[:cut], "preamble|trailer|payload")
            assert re_search("truncated|shorter|end marker|size mismatch", str(exc)), str(exc)

    @pytest.mark.parametrize("what", ["appended bytes", "prepended bytes", "empty file", "random bytes",
                                      "a safetensors file", "trailer only", "a format-1 artifact"])
    def test_files_that_are_not_artifacts_are_rejected(self, plain_artifact, rejections, tmp_path, what):
        from safetensors.torch import save_file
        save_file({"w": torch.ones(4, 4)}, tmp_path / "w.safetensors")
        blob = {"appended bytes": plain_artifact + b"\0" * 16, "prepended bytes": b"#!" + plain_artifact,
                "empty file": b"", "random bytes": np.random.default_rng(1).bytes(5000),
                "a safetensors file": (tmp_path / "w.safetensors").read_bytes(),
                "trailer only": b"x" * 100 + TRAILER, "a format-1 artifact": b"PGOLF\x00v1" + plain_artifact[8:]}[what]
        exc = rejections.check(blob, "preamble|trailer")
        if what == "a format-1 artifact":
            assert "re-pack the run with `pgolf pack`" in str(exc)

    def test_missing_path_and_folder_are_rejected(self, tmp_path):
        for path in (tmp_path / "absent.pgolf", tmp_path):
            with pytest.raises(ArtifactError, match="artifact not found") as info:
                pgolf.unpack(path)
            assert str(path) in str(info.value)

    CRAFTED = {  # checksums all valid: only what the fields say is wrong -> (build the file, region, message)
        "header JSON is a list": (lambda p: rebuilt(p, header=["a", "list"]), "header", "expected a JSON object"),
        "no config": (lambda p: rebuilt(p, header={"pgolf_version": "0.1.0"}), "header", "'config' object is missing"),
        "unknown payload compressor": (lambda p: rebuilt(p, compressor=9), "header", "unknown payload compressor 9"),
        "flags beyond the byte shuffle": (lambda p: rebuilt(p, flags=6), "header", "unknown flags 0x06"),
        "no part checks": (lambda p: rebuilt(p, checks=b""), "header", "holds 0 part checks"),
        "one part check too many": (lambda p: rebuilt(p, checks=p.checks + b"\0\0"), "header", "part checks; the embedded config describes"),
        "half a part check": (lambda p: rebuilt(p, checks=p.checks + b"\0"), "header", "part checks"),
        "JSON length over the cap": (lambda p: rebuilt(p, json_len=1 << 30), "header", "larger than allowed"),
        "compressed JSON longer than the header": (_long_json_field, "header", "larger than allowed|than the header"),
        "JSON length one byte short": (lambda p: rebuilt(p, json_len=len(json.dumps(p.header)) - 1), "header", "expands past"),
        "JSON length one byte long": (lambda p: rebuilt(p, json_len=len(json.dumps(p.header)) + 1), "header", "ends after"),
        "header JSON not brotli": (lambda p: rebuilt(p, packed=b"\x8bnot brotli at all"), "header", "does not decompress"),
        "header JSON not UTF-8": (lambda p: rebuilt(p, text=b'{"config": "\xff\xfe"}'), "header", "not valid JSON"),
        "header JSON nested 100,000 deep": (lambda p: rebuilt(p, text=_nested(100_000)), "header", "nested 100001 levels deep"),
        "embedded config with an unknown key": (lambda p: rebuilt(p, header=_config(p, num_layerz=3)), "header", "num_layerz"),
        "embedded config with a wrong type": (lambda p: rebuilt(p, header=_config(p, num_layers="four")), "header", "num_layers"),
        "embedded config of another width": (lambda p: rebuilt(p, header=_config(p, model_dim=64)), "payload",
                                             "does not decompress to the [\\d,]+ bytes the config implies"),
        "26.8 B parameters with allow_over_budget": (
            lambda p: rebuilt(p, header=_config(p, model_dim=16384, num_heads=128, num_kv_heads=64, num_layers=50)),
            "header", "at least [\\d,]+ parameters .* quant.allow_over_budget does not lift this"),
        "a million layers": (lambda p: rebuilt(p, header=_config(p, num_layers=10**6)), "header", "num_layers = 1,000,000"),
        "a tensor of 2**71 elements": (lambda p: rebuilt(p, header=_config(p, model_dim=2**35, mlp_mult=2.0)), "header",
                                       "at least [\\d,]+ parameters"),
        "tensors of 2**32 x 2**32": (lambda p: rebuilt(p, header=_config(p, model_dim=2**32)), "header", "at least"),
        "MLP 16x wide: the exact count over the cap": (
            lambda p: rebuilt(p, header=_config(p, model_dim=4096, num_heads=8, num_kv_heads=4, mlp_mult=16.0)),
            "header", "a model of [\\d,]+ parameters, more than"),
        "8,192 virtual layers": (lambda p: rebuilt(p, header=_config(p, layer_schedule=[0, 1, 2, 3] * 2048)), "header",
                                 "8,192 virtual layers"),
        "stored payload 10 bytes short": (lambda p: rebuilt(p, payload=p.payload[:-10]), "payload", "holds [\\d,]+ bytes, expected"),
        "stored payload 10 bytes long": (lambda p: rebuilt(p, payload=p.payload + bytes(10)), "payload", "holds [\\d,]+ bytes, expected"),
    }

    @pytest.mark.parametrize("what", list(CRAFTED))
    def test_well_checksummed_but_ill_formed_headers_are_rejected(self, plain_artifact, rejections, what):
        craft, region, message = self.CRAFTED[what]
        exc = rejections.check(craft(parse(plain_artifact)), region)
        assert re_search(message, str(exc)), str(exc)

    @pytest.mark.parametrize("compressor", ["zlib", "lzma", "zstd", "brotli"])
    def test_a_compressed_payload_with_bytes_after_its_end_is_rejected(self, tmp_path, rejections, compressor):
        p = parse(write_artifact(tmp_path / "c.pgolf", compressor=compressor).read_bytes())
        exc = rejections.check(rebuilt(p, payload=p.payload + b"tail"), "payload")
        assert re_search("unexpected bytes|corrupt", str(exc)), str(exc)

    def test_compressor_none_round_trips_through_pack_and_unpack(self, tmp_path):
        cfg = artifact_cfg(compressor="none")
        model = small_model({})
        sizes = pgolf.pack(model, cfg, tmp_path / "n.pgolf")
        assert sizes["compressor"] == "none" and sizes["model_bytes"] > sizes["raw_bytes"]
        loaded, cfg2 = pgolf.unpack(tmp_path / "n.pgolf")
        assert cfg2.quant.compressor == "none"
        again = write_artifact(tmp_path / "z.pgolf", compressor="zlib")
        zlib_model, _ = pgolf.unpack(again)
        for (name, a), (_, b) in zip(loaded.state_dict().items(), zlib_model.state_dict().items()):
            assert torch.equal(a, b), name  # the compressor never changes the stored values


# ============================================================================ memory bound of crafted artifacts


MEMORY_BOUND_MB = 100  # what loading a crafted file may add to a fresh process's peak RSS
BOMB_BYTES = 160 << 20  # what each decompression bomb expands to: more than the bound


def _bomb(compressor: str) -> bytes:
    """A well-formed stream of `compressor` (as pgolf writes it: raw deflate, raw LZMA2, zstd, brotli) that
    expands to BOMB_BYTES of zeros, made without ever holding them."""
    chunk, count = bytes(1 << 20), BOMB_BYTES >> 20
    if compressor == "zlib":  # a fully flushed deflate segment is self-contained: repeat it, then a final block
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        segment = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
        return segment * count + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    if compressor == "lzma":  # one LZMA2 chunk of 2 MiB zeros; its repeats reset the coder state, not the dictionary
        first = lzma.compress(bytes(2 << 20), format=lzma.FORMAT_RAW,
                              filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 4096, "preset": 6}])[:-1]
        again = bytes([(first[0] & 0x9F) | 0x40]) + first[1:]  # control bits 5-6: state reset + props, no dict reset
        return first + again * (count // 2 - 1) + b"\x00"
    if compressor == "zstd":
        c = zstandard.ZstdCompressor(level=1).compressobj()
        return b"".join(c.compress(chunk) for _ in range(count)) + c.flush()
    c = brotli.Compressor(quality=1)
    return b"".join(c.process(chunk) for _ in range(count)) + c.finish()


MEMORY_CASES = {  # what -> (build the file from the parsed plain artifact, region of the error; None = loads)
    "honest artifact (control)": (lambda p: rebuilt(p), None),
    **{f"{c} payload bomb (160 MiB of zeros)": ((lambda c: lambda p: rebuilt(p, payload=_bomb(c), compressor=COMPRESSOR_ID[c]))(c),
                                                "payload") for c in ("zlib", "lzma", "zstd", "brotli")},
    "header JSON bomb (160 MiB)": (lambda p: rebuilt(p, packed=_bomb("brotli"), json_len=len(json.dumps(p.header))), "header"),
    "header JSON nested 500,000 deep": (lambda p: rebuilt(p, text=_nested(500_000)), "header"),
    "26.8 B parameters with allow_over_budget": (
        lambda p: rebuilt(p, header=_config(p, model_dim=16384, num_heads=128, num_kv_heads=64, num_layers=50)), "header"),
    "a million layers": (lambda p: rebuilt(p, header=_config(p, num_layers=10**6)), "header"),
    "a tensor of 2**71 elements": (lambda p: rebuilt(p, header=_config(p, model_dim=2**35, mlp_mult=2.0)), "header"),
    "MLP 16x wide: the exact count over the cap": (
        lambda p: rebuilt(p, header=_config(p, model_dim=4096, num_heads=8, num_kv_heads=4, mlp_mult=16.0)), "header"),
}

# Loads each file in turn in one fresh process, after one unmeasured load of an honest artifact (the first load
# of a process pays for torch's own start-up, ~80 MB). Per file: the peak-RSS mark is reset (/proc/self/clear_refs 5)
# and the load's cost is VmHWM after it minus VmRSS before it. (ru_maxrss cannot be reset, and a child started
# from pytest inherits pytest's own peak in it across fork + exec, which would hide any cost below that.) Where
# the reset is refused, the mark before the load is the baseline: conservative, never lenient.
LOAD_AND_MEASURE = """
import gc, json, re, sys
import pgolf
from pgolf.quant.container import ArtifactError

def status(key):
    return int(re.search(rf"^{key}:\\s+(\\d+) kB", open("/proc/self/status").read(), re.M).group(1))

pgolf.unpack(sys.argv[1])
for path in sys.argv[2:]:
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    before = status("VmRSS") if reset else status("VmHWM")
    try:
        pgolf.unpack(path)
        error = None
    except ArtifactError as exc:
        error = str(exc)
    print(json.dumps({"path": path, "before_kib": before, "peak_kib": status("VmHWM"), "reset": reset, "error": error}))
"""


@pytest.fixture(scope="module")
def memory_results(plain_artifact, tmp_path_factory) -> dict[str, dict]:
    """{case: measurement} of every MEMORY_CASES file, loaded one after another by one child process."""
    folder = tmp_path_factory.mktemp("crafted")
    paths = {}
    for i, (what, (craft, _)) in enumerate(MEMORY_CASES.items()):
        paths[what] = folder / f"case{i}.pgolf"
        paths[what].write_bytes(craft(parse(plain_artifact)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    warm_up = folder / "warm_up.pgolf"
    warm_up.write_bytes(plain_artifact)
    proc = subprocess.run([sys.executable, "-c", LOAD_AND_MEASURE, str(warm_up), *map(str, paths.values())], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_path = {r["path"]: r for r in map(json.loads, proc.stdout.strip().splitlines())}
    return {what: by_path[str(path)] for what, path in paths.items()}


class TestMemoryBound:
    """A crafted file (every checksum valid) loaded by a fresh process: an ArtifactError naming the file and the
    region, and at most MEMORY_BOUND_MB added to the process's peak resident memory."""

    @pytest.mark.parametrize("what", list(MEMORY_CASES))
    def test_loading_a_crafted_file_stays_within_the_memory_bound(self, memory_results, record_property, what):
        out = memory_results[what]
        added_mb = (out["peak_kib"] - out["before_kib"]) / 1024
        record_property("peak_rss_added_mb", round(added_mb, 1))
        region = MEMORY_CASES[what][1]
        if region is None:
            assert out["error"] is None, out["error"]
        else:
            assert out["error"] is not None, "the crafted file loaded"
            assert out["error"].startswith(f"{out['path']}: {region}"), out["error"]
        assert added_mb <= MEMORY_BOUND_MB, f"loading took {added_mb:.0f} MB more peak RSS (bound {MEMORY_BOUND_MB} MB)"


# ============================================================================ shards and data folders


DATA_FAULTS = {
    # name: (mutation of the folder, error type, message pattern)
    "bad magic in the second training shard": (
        lambda f: put_int32(f / "fineweb_train_000001.bin", 0, 12345), ShardError, r"fineweb_train_000001.bin: bad magic 12345"),
    "bad version in the validation shard": (
        lambda f: put_int32(f / "fineweb_val_000000.bin", 1, 7), ShardError, r"fineweb_val_000000.bin: unsupported shard version 7"),
    "size mismatch (trailing bytes)": (
        lambda f: (f / "fineweb_train_000000.bin").write_bytes((f / "fineweb_train_000000.bin").read_bytes() + b"xy"),
        ShardError, r"fineweb_train_000000.bin: size mismatch"),
    "truncated training shard": (
        lambda f: (f / "fineweb_train_000001.bin").write_bytes((f / "fineweb_train_000001.bin").read_bytes()[:-100]),
        ShardError, r"fineweb_train_000001.bin: truncated"),
    "shard shorter than its header": (
        lambda f: (f / "fineweb_val_000000.bin").write_bytes(b"\0" * 100), ShardError,
        r"fineweb_val_000000.bin: truncated: 100 bytes is shorter than the 1024-byte header"),
    "header token count larger than the file": (
        lambda f: put_int32(f / "fineweb_train_000000.bin", 2, 10**6), ShardError, r"fineweb_train_000000.bin: truncated"),
    "token id >= vocab in the last training shard": (
        lambda f: put_token(f / "fineweb_train_000001.bin", 4321, 1500), DataMismatchError,
        r"fineweb_train_000001.bin\) holds token ids up to 1500"),
    "token id >= vocab in the validation shard": (
        lambda f: put_token(f / "fineweb_val_000000.bin", 17, 4000), DataMismatchError,
        r"fineweb_val_000000.bin\) holds token ids up to 4000"),
    "empty folder": (
        lambda f: [p.unlink() for p in f.iterdir()], ShardError, r"no training shards matching 'fineweb_train_\*.bin'"),
    "validation files missing": (
        lambda f: (f / "fineweb_val_000000.bin").unlink(), ShardError, r"no validation shards matching"),
    "training shards hold no tokens": (
        lambda f: [write_shard(p, []) for p in f.glob("fineweb_train_*.bin")], ShardError, r"training shards hold no tokens"),
    "validation shard holds no tokens": (
        lambda f: write_shard(f / "fineweb_val_000000.bin", []), ShardError, r"validation shards hold 0 tokens; nothing to score"),
}


@pytest.mark.usefixtures("shared_data")
class TestData:
    @pytest.mark.parametrize("what", list(DATA_FAULTS))
    def test_bad_data_is_an_error_before_training_starts(self, tmp_path, what):
        mutate, error, pattern = DATA_FAULTS[what]
        folder = data_folder(tmp_path)
        mutate(folder)
        spy = StepSpy()
        with pytest.raises(error, match=pattern):
            pgolf.train(fast_config(data__path=str(folder)), tmp_path / "run", progress=False, step_callback=spy)
        assert_no_training(spy, tmp_path / "run")

    @pytest.mark.parametrize("what", ["data folder missing", "data path is a file"])
    def test_missing_data_folder_is_an_error_before_training(self, tmp_path, what):
        path = tmp_path / "nowhere"
        if what == "data path is a file":
            path.write_text("not a folder")
        spy = StepSpy()
        with pytest.raises(ShardError, match=f"{path}: data folder not found"):
            pgolf.train(fast_config(data__path=str(path)), tmp_path / "run", progress=False, step_callback=spy)
        assert_no_training(spy, tmp_path / "run")

    @pytest.mark.parametrize("what", ["tokenizer missing", "tokenizer is not a SentencePiece model"])
    def test_bad_tokenizer_is_an_error_before_training(self, tmp_path, what):
        folder = data_folder(tmp_path)
        tok = tmp_path / "tok.model"
        if what != "tokenizer missing":
            tok.write_bytes(b"\x08\x01garbage" * 50)
        spy = StepSpy()
        with pytest.raises(TokenizerError, match=f"{tok}: (tokenizer model not found|not a readable SentencePiece model)"):
            pgolf.train(fast_config(data__path=str(folder), data__tokenizer=str(tok)), tmp_path / "run",
                        progress=False, step_callback=spy)
        assert_no_training(spy, tmp_path / "run")

    def test_bad_shard_through_the_cli_exits_2_with_the_message(self, tmp_path, capsys):
        folder = data_folder(tmp_path)
        put_int32(folder / "fineweb_val_000000.bin", 0, 99)
        code = cli_main(["train", "--recipe", "baseline", "--scale", "tiny", "--data", str(folder), "--tokenizer",
                         str(SP1024_MODEL), "--out", str(tmp_path / "run"), "--quiet", *_micro_sets()])
        assert code == 2
        err = capsys.readouterr().err
        assert "pgolf: error:" in err and "fineweb_val_000000.bin: bad magic 99" in err
        assert not (tmp_path / "run" / "log.jsonl").exists()


def _micro_sets(**extra) -> list[str]:
    from conftest import MICRO
    sets = {**MICRO, "data.val_tokens_limit": 1025, **extra}
    return sum((["--set", f"{k}={v}"] for k, v in sets.items()), [])


# ============================================================================ tokenizer / data / model mismatches


SP4096_DIR = SHARED / "datasets" / "fineweb10B_sp4096_sample"
SP4096_MODEL = SHARED / "tokenizers" / "fineweb_4096_bpe.model"


def _max_id(folder: Path) -> int:
    return max(int(np.asarray(read_shard(p)).max()) for p in folder.glob("fineweb_*.bin"))


@pytest.mark.usefixtures("shared_data")
class TestMismatch:
    CASES = {  # (data folder, tokenizer, model.vocab_size) -> the three values the error must name
        "model vocab smaller than tokenizer and data": (SP1024_DIR, SP1024_MODEL, 512),
        "tokenizer larger than model and data": (SP1024_DIR, SP4096_MODEL, 1024),
        "data ids beyond tokenizer and model": (SP4096_DIR, SP1024_MODEL, 1024),
        "model vocab larger than the tokenizer": (SP1024_DIR, SP1024_MODEL, 2048),
    }

    @pytest.mark.parametrize("what", list(CASES))
    def test_disagreement_is_an_error_naming_all_three_values(self, tmp_path, what):
        folder, tokenizer, model_vocab = self.CASES[what]
        need_shared_data(tokenizer, folder)
        tokenizer_vocab = int(tokenizer.name.split("_")[1])
        spy = StepSpy()
        with pytest.raises(DataMismatchError) as info:
            pgolf.train(fast_config(data__path=str(folder), data__tokenizer=str(tokenizer), model__vocab_size=model_vocab),
                        tmp_path / "run", progress=False, step_callback=spy)
        message = str(info.value)
        assert f"has {tokenizer_vocab} pieces" in message
        assert f"model.vocab_size = {model_vocab}" in message
        assert f"token ids up to {_max_id(folder)}" in message
        assert_no_training(spy, tmp_path / "run")

    def test_mismatch_through_the_cli_exits_2_naming_the_values(self, tmp_path, capsys):
        code = cli_main(["train", "--recipe", "baseline", "--scale", "tiny", "--data", str(SP1024_DIR), "--tokenizer",
                         str(SP1024_MODEL), "--out", str(tmp_path / "run"), "--quiet",
                         *_micro_sets(**{"model.vocab_size": 512})])
        assert code == 2
        err = capsys.readouterr().err
        assert "vocabulary mismatch" in err and "1024 pieces" in err and "model.vocab_size = 512" in err


# ============================================================================ config


CONFIG_FAULTS = [  # (--set overrides, pattern the error must contain: the key and what is wrong)
    (["model.num_layer=3"], r"unknown config key 'model.num_layer'; did you mean 'model.num_layers'\?"),
    (["modle.num_heads=4"], r"unknown config key 'modle.num_heads'; did you mean 'model.num_heads'\?"),
    (["train.stesp=10"], r"unknown config key 'train.stesp'; did you mean 'train.steps'\?"),
    (["quant.compresor=zstd"], r"unknown config key 'quant.compresor'; did you mean 'quant.compressor'\?"),
    (["model.num_layers=many"], r"'model.num_layers' must be an integer, got 'many'"),
    (["train.steps=1.5"], r"'train.steps' must be an integer, got 1.5"),
    (["model.tie_embeddings=1"], r"'model.tie_embeddings' must be true or false"),
    (["optim.matrix_lr=fast"], r"'optim.matrix_lr' must be a number"),
    (["model.layer_schedule=3"], r"'model.layer_schedule' must be a list"),
    (["quant.compressor=gzip"], r"'quant.compressor' must be one of zlib, lzma, zstd, brotli, auto, none, pergroup; got 'gzip'"),
    (["model.num_heads=7"], r"'model.num_heads' \(7\) must divide 'model.model_dim' \(512\)"),
    (["model.num_kv_heads=3"], r"'model.num_kv_heads' \(3\) must divide 'model.num_heads' \(8\)"),
    (["model.layer_schedule=[0,1,2,3,4,5,6,7,8,9]"], r"'model.layer_schedule' names block 9, but model.num_layers = 9"),
    (["model.layer_schedule=[0,1,2]"], r"'model.layer_schedule' never runs block"),
    (["model.num_layers=40", "model.model_dim=1024", "model.num_heads=16"],
     r"estimated artifact of [\d,]+ bytes \(before code\) is far over the 16,000,000-byte limit: shrink 'model.num_layers'"),
    (["model.num_layers=3", "model.num_layers"], r"--set expects key=value, got 'model.num_layers'"),
]


class TestConfig:
    @pytest.mark.parametrize("sets, pattern", CONFIG_FAULTS, ids=[" ".join(s) for s, _ in CONFIG_FAULTS])
    def test_bad_config_is_an_error_naming_the_key_in_python_and_cli(self, tmp_path, capsys, sets, pattern):
        from pgolf.config import parse_set_args
        with pytest.raises(ConfigError, match=pattern):
            pgolf.load_recipe("baseline", overrides=parse_set_args(sets))
        code = cli_main(["train", "--recipe", "baseline", "--runs-root", str(tmp_path / "runs"), "--quiet",
                         *sum((["--set", s] for s in sets), [])])
        assert code == 2
        err = capsys.readouterr().err
        assert err.startswith("pgolf: error:") and re_search(pattern, err), err
        assert not (tmp_path / "runs").exists()  # nothing was started

    def test_unknown_key_in_a_recipe_file_names_file_and_key(self, tmp_path, capsys):
        recipe = tmp_path / "mine.toml"
        recipe.write_text('extends = "baseline"\n[optim]\nmatrx_lr = 0.02\n')
        assert cli_main(["train", "--recipe", str(recipe), "--runs-root", str(tmp_path / "runs")]) == 2
        err = capsys.readouterr().err
        assert f"{recipe}: unknown config key 'optim.matrx_lr'; did you mean 'optim.matrix_lr'?" in err

    def test_recipe_file_that_is_not_toml_names_the_file(self, tmp_path, capsys):
        recipe = tmp_path / "broken.toml"
        recipe.write_text("[model\nnum_layers = 3\n")
        assert cli_main(["config", "--recipe", str(recipe)]) == 2
        assert f"{recipe}: not valid TOML" in capsys.readouterr().err

    def test_resume_with_a_damaged_config_names_the_key(self, tmp_path, capsys):
        run = tmp_path / "run"
        run.mkdir()
        save_config(pgolf.load_recipe("tiny"), run / "config.toml")
        text = (run / "config.toml").read_text().replace("num_heads = ", "num_heads = \"x\" #", 1)
        (run / "config.toml").write_text(text)
        assert cli_main(["train", "--resume", str(run)]) == 2
        assert "'model.num_heads' must be an integer" in capsys.readouterr().err

    def test_real_process_exit_status_is_2_with_the_message_on_stderr(self, tmp_path):
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.run([sys.executable, "-m", "pgolf", "train", "--set", "model.num_layer=3", "--runs-root",
                               str(tmp_path / "runs")], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 2
        assert "unknown config key 'model.num_layer'; did you mean 'model.num_layers'?" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""


# ============================================================================ training faults


@pytest.fixture(scope="module")
def straight_run(shared_data, tmp_path_factory) -> Path:
    """The uninterrupted reference run (6 steps, EMA averaging so the checkpoint carries averaging state)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    pgolf.train(fast_config(train__averaging="ema"), run, progress=False)
    return run


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


class NonFiniteLoss:
    """Patch GPT.forward so that the training forward number `at` (1-based) returns a NaN/inf loss from finite
    weights, snapshotting the weights it saw: the 'last good' state the checkpoint must hold."""

    def __init__(self, monkeypatch, at: int, value: float):
        self.calls, self.at, self.value, self.snapshot = 0, at, value, None
        original = GPT.forward

        def forward(model, *args, **kwargs):
            out = original(model, *args, **kwargs)
            if len(args) + len(kwargs) >= 2 and model.training:  # a training call (inputs and targets)
                self.calls += 1
                if self.calls == self.at:
                    self.snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    return out * self.value
            return out

        monkeypatch.setattr(GPT, "forward", forward)


@pytest.mark.usefixtures("shared_data")
class TestTraining:
    @pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
    def test_non_finite_loss_stops_and_keeps_the_last_good_weights(self, tmp_path, monkeypatch, value):
        fault = NonFiniteLoss(monkeypatch, at=4, value=value)
        with pytest.raises(TrainingDiverged, match=r"non-finite training loss \((nan|inf)\) at step 3.*last good weights are in"):
            pgolf.train(fast_config(), tmp_path / "run", progress=False)
        folder = checkpoint_dir(tmp_path / "run")
        assert folder is not None and json.loads((folder / "state.json").read_text())["step"] == 3
        saved = load_file(folder / "model.safetensors")
        assert all(bool(torch.isfinite(t).all()) for t in saved.values())
        assert_same_weights(saved, fault.snapshot)  # exactly the weights before the bad step
        assert not (tmp_path / "run" / "artifact.pgolf").exists()

    def test_non_finite_loss_through_the_cli_exits_3(self, tmp_path, monkeypatch, capsys):
        NonFiniteLoss(monkeypatch, at=2, value=float("nan"))
        code = cli_main(["train", "--recipe", "baseline", "--scale", "tiny", "--data", str(SP1024_DIR), "--tokenizer",
                         str(SP1024_MODEL), "--out", str(tmp_path / "run"), "--quiet", *_micro_sets()])
        assert code == 3
        assert "pgolf: error: non-finite training loss (nan) at step 1" in capsys.readouterr().err
        assert (tmp_path / "run" / "checkpoint" / "state.json").is_file()

    def test_weights_made_non_finite_by_an_update_never_overwrite_the_good_checkpoint(self, tmp_path, monkeypatch):
        models, snapshots = [], {}
        real_build = trainer_module.build_model
        monkeypatch.setattr(trainer_module, "build_model", lambda *a, **k: models.append(real_build(*a, **k)) or models[-1])

        def poison_after_step_3(step, info):
            snapshots[step] = {k: v.detach().clone() for k, v in models[0].state_dict().items()}
            if step == 3:  # as if the third update had produced a NaN weight
                with torch.no_grad():
                    for p in models[0].parameters():
                        p.view(-1)[0] = float("nan")

        with pytest.raises(TrainingDiverged, match=r"already non-finite.*not saved; the last good checkpoint.*\(step 2\)"):
            pgolf.train(fast_config(train__checkpoint_every=2), tmp_path / "run", progress=False,
                        step_callback=poison_after_step_3)
        folder = checkpoint_dir(tmp_path / "run")
        assert json.loads((folder / "state.json").read_text())["step"] == 2
        assert_same_weights(load_file(folder / "model.safetensors"), snapshots[2])

    @pytest.mark.parametrize("stops", [(1,), (3,), (5,), (2, 4)], ids=["at 1 of 6", "at 3 of 6", "at 5 of 6", "at 2 and 4 of 6"])
    def test_sigterm_then_resume_is_bit_identical_to_an_uninterrupted_run(self, straight_run, tmp_path, stops):
        run = tmp_path / "run"

        def sigterm_at(step, info):
            if step in stops:
                os.kill(os.getpid(), signal.SIGTERM)

        with pytest.raises(TrainingInterrupted) as info:
            pgolf.train(fast_config(train__averaging="ema"), run, progress=False, step_callback=sigterm_at)
        assert info.value.step == stops[0]
        for stop in stops[1:]:
            with pytest.raises(TrainingInterrupted) as info:
                pgolf.train(pgolf.load_config(run / "config.toml"), run, resume=True, progress=False, step_callback=sigterm_at)
            assert info.value.step == stop
        result = pgolf.train(pgolf.load_config(run / "config.toml"), run, resume=True, progress=False)
        assert_same_weights(_weights(straight_run), _weights(run))
        assert result["val_bpb"] == json.loads((straight_run / "result.json").read_text())["val_bpb"]
        logged = [r["step"] for r in read_log(run / "log.jsonl") if "train_loss" in r]
        assert logged == sorted(set(logged))

    def test_resume_survives_a_log_line_torn_by_a_kill(self, straight_run, tmp_path):
        run = tmp_path / "run"
        with pytest.raises(TrainingInterrupted):
            pgolf.train(fast_config(train__averaging="ema"), run, progress=False,
                        step_callback=lambda s, i: s == 3 and os.kill(os.getpid(), signal.SIGTERM))
        with open(run / "log.jsonl", "a") as f:
            f.write('{"step": 4, "train_lo')  # the process died half-way through a line
        pgolf.train(pgolf.load_config(run / "config.toml"), run, resume=True, progress=False)
        assert_same_weights(_weights(straight_run), _weights(run))
        assert all(isinstance(r, dict) for r in read_log(run / "log.jsonl"))

    def test_resume_from_a_damaged_checkpoint_exits_2_naming_the_file(self, tmp_path, capsys):
        run = tmp_path / "run"
        with pytest.raises(TrainingInterrupted):
            pgolf.train(fast_config(), run, progress=False,
                        step_callback=lambda s, i: s == 2 and os.kill(os.getpid(), signal.SIGTERM))
        weights = run / "checkpoint" / "model.safetensors"
        weights.write_bytes(flipped(weights.read_bytes(), weights.stat().st_size - 5))
        assert cli_main(["train", "--resume", str(run), "--quiet"]) == 2
        assert f"pgolf: error: {weights}: checksum mismatch" in capsys.readouterr().err
        assert not (run / "artifact.pgolf").exists()

    def test_disk_full_at_a_checkpoint_keeps_the_previous_one_and_resume_loses_nothing(self, straight_run, tmp_path,
                                                                                       monkeypatch):
        import pgolf.training.checkpoint as ckpt
        real_save = ckpt.save_file
        run = tmp_path / "run"

        def save_file_until_full(tensors, path, *args, **kwargs):
            if (run / "checkpoint" / "state.json").exists():  # the first checkpoint fits; then the disk is full
                Path(path).write_bytes(b"\0" * 10)
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real_save(tensors, path, *args, **kwargs)

        monkeypatch.setattr(ckpt, "save_file", save_file_until_full)
        with pytest.raises(OSError, match=r"could not write a checkpoint in .*No space left on device; the previous "
                                          r"checkpoint .*checkpoint \(step 2\) is intact") as info:
            pgolf.train(fast_config(train__averaging="ema", train__checkpoint_every=2), tmp_path / "run", progress=False)
        assert info.value.errno == errno.ENOSPC
        assert not (tmp_path / "run" / "checkpoint.new").exists()
        monkeypatch.setattr(ckpt, "save_file", real_save)
        pgolf.train(pgolf.load_config(tmp_path / "run" / "config.toml"), tmp_path / "run", resume=True, progress=False)
        assert_same_weights(_weights(straight_run), _weights(tmp_path / "run"))


# ============================================================================ failing writes (unit level)


def _checkpoint_parts():
    """The small model and its optimizers after one step (so the optimizers hold state to save)."""
    cfg = artifact_cfg()
    model = small_model({}).train()
    optimizers = build_optimizers(model, cfg.optim, cfg.model.tie_embeddings)
    tokens = torch.from_numpy(random_stream(129, 64).astype(np.int64))
    model(tokens[:-1].view(2, 64), tokens[1:].view(2, 64)).backward()
    for opt in optimizers.values():
        opt.step()
    return model, optimizers


def _save(run_dir: Path, model, optimizers, step: int) -> None:
    save_checkpoint(run_dir, model=model, optimizers=optimizers, averaging_tensors={},
                    state={"step": step, "world_size": 1})


def _bump(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)


def _only_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class TestWrites:
    @pytest.mark.parametrize("where", ["model file, disk full", "state.json, disk full",
                                       "rename checkpoint -> checkpoint.old, read-only",
                                       "rename checkpoint.new -> checkpoint, read-only"])
    def test_failed_checkpoint_write_keeps_the_previous_checkpoint(self, tmp_path, monkeypatch, where):
        import pgolf.training.checkpoint as ckpt
        model, optimizers = _checkpoint_parts()
        _save(tmp_path, model, optimizers, step=10)
        good = {k: v.clone() for k, v in model.state_dict().items()}
        _bump(model)
        if "model file" in where:
            monkeypatch.setattr(ckpt, "save_file", _fail_for("model.safetensors", ckpt.save_file))
        elif "state.json" in where:
            monkeypatch.setattr(ckpt, "_write_synced", _fail_for("state.json", ckpt._write_synced))
        else:
            source = "checkpoint" if "checkpoint -> checkpoint.old" in where else "checkpoint.new"
            real_rename = Path.rename

            def rename(self, target):
                if self.name == source:
                    raise OSError(errno.EROFS, "Read-only file system", str(self))
                return real_rename(self, target)

            monkeypatch.setattr(Path, "rename", rename)
        with pytest.raises(OSError, match=r"previous checkpoint .* \(step 10\) is intact"):
            _save(tmp_path, model, optimizers, step=20)
        monkeypatch.undo()
        assert "checkpoint.new" not in _only_files(tmp_path)
        fresh, fresh_opt = _checkpoint_parts()
        state, _ = load_checkpoint(tmp_path, model=fresh, optimizers=fresh_opt)
        assert state["step"] == 10
        assert_same_weights({k: v for k, v in fresh.state_dict().items()}, good)

    @pytest.mark.parametrize("damage", ["flip a weight byte", "truncate the model file", "truncate an optimizer file",
                                        "remove state.json's partner file", "garbage state.json"])
    def test_damaged_checkpoint_is_an_error_naming_the_file_not_a_silent_resume(self, tmp_path, damage):
        model, optimizers = _checkpoint_parts()
        _save(tmp_path, model, optimizers, step=5)
        folder = tmp_path / "checkpoint"
        target = {"flip a weight byte": "model.safetensors", "truncate the model file": "model.safetensors",
                  "truncate an optimizer file": "optim.rank0.safetensors",
                  "remove state.json's partner file": "optim.rank0.json", "garbage state.json": "state.json"}[damage]
        data = (folder / target).read_bytes()
        if damage == "flip a weight byte":
            (folder / target).write_bytes(flipped(data, len(data) - 3))  # inside the tensor data, not the header
        elif damage.startswith("truncate"):
            (folder / target).write_bytes(data[: len(data) // 2])
        elif damage.startswith("remove"):
            (folder / target).unlink()
        else:
            (folder / target).write_text("{not json")
        fresh, fresh_opt = _checkpoint_parts()
        with pytest.raises(CheckpointError, match=str(folder)):
            load_checkpoint(tmp_path, model=fresh, optimizers=fresh_opt)

    @pytest.mark.parametrize("fault", ["disk full while writing", "read-only folder at the rename"])
    def test_failed_artifact_write_keeps_the_previous_artifact(self, tmp_path, monkeypatch, fault):
        path = write_artifact(tmp_path / "a.pgolf", seed=0)
        before = path.read_bytes()
        _inject_write_fault(monkeypatch, fault)
        with pytest.raises(OSError, match=f"could not write {path}: .*the previous file \\(if any\\) is untouched"):
            write_artifact(path, seed=1)
        monkeypatch.undo()
        assert path.read_bytes() == before and _only_files(tmp_path) == ["a.pgolf"]
        pgolf.unpack(path)

    @pytest.mark.parametrize("fault", ["disk full while writing", "read-only folder at the rename"])
    def test_failed_shard_write_keeps_the_previous_shard(self, tmp_path, monkeypatch, fault):
        path = tmp_path / "fineweb_train_000000.bin"
        write_shard(path, random_stream(1000, VOCAB))
        before = path.read_bytes()
        _inject_write_fault(monkeypatch, fault)
        with pytest.raises(OSError, match=f"could not write {path}"):
            write_shard(path, random_stream(5000, VOCAB, seed=3))
        monkeypatch.undo()
        assert path.read_bytes() == before and _only_files(tmp_path) == [path.name]

    @pytest.mark.parametrize("fault", ["disk full while writing", "read-only folder at the rename"])
    def test_failed_run_file_writes_keep_the_previous_files(self, tmp_path, monkeypatch, fault):
        result, log, config = tmp_path / "result.json", tmp_path / "log.jsonl", tmp_path / "config.toml"
        write_json(result, {"val_bpb": 1.5})
        LogWriter(log).write({"step": 1, "train_loss": 3.0})
        LogWriter(log).write({"step": 2, "train_loss": 2.0})
        save_config(pgolf.load_recipe("tiny"), config)
        before = {p: p.read_bytes() for p in (result, log, config)}
        _inject_write_fault(monkeypatch, fault)
        with pytest.raises(OSError, match=f"could not write {result}"):
            write_json(result, {"val_bpb": 9.9})
        with pytest.raises(OSError, match=f"could not write {log}"):
            LogWriter(log, resume_step=1)  # the resume rewrite of log.jsonl
        with pytest.raises(OSError, match=f"could not write {config}"):
            save_config(pgolf.load_recipe("baseline"), config)
        monkeypatch.undo()
        assert {p: p.read_bytes() for p in before} == before
        assert _only_files(tmp_path) == ["config.toml", "log.jsonl", "result.json"]


def _fail_for(name: str, real):
    """`real(...)` except when it writes the file `name`: then a few bytes land and the disk is full."""
    def write(*args, **kwargs):
        for path in args:
            if isinstance(path, (str, Path)) and Path(path).name == name:
                Path(path).write_bytes(b"\0" * 7)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(*args, **kwargs)
    return write


class _FullDiskFile:
    """A file whose writes store half of the data, then fail as a full disk does."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(bytes(data)[: max(1, len(data) // 2)])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def _inject_write_fault(monkeypatch, fault: str) -> None:
    import builtins
    if fault == "disk full while writing":
        real_open = builtins.open

        def open_full(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            return _FullDiskFile(f) if any(c in mode for c in "wa") and str(file).endswith(".tmp") else f

        monkeypatch.setattr(builtins, "open", open_full)
    else:
        def read_only(src, dst, *args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(dst))

        monkeypatch.setattr(os, "replace", read_only)


# ============================================================================ distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(out: Path) -> list[str]:
    sets = {"model.num_layers": 2, "model.model_dim": 64, "model.num_heads": 4, "model.num_kv_heads": 2,
            "train.steps": 100000, "train.batch_tokens": 512, "train.seq_len": 64, "train.micro_batch_tokens": 256,
            "train.log_every": 1, "train.warmdown": "none", "data.val_tokens_limit": 1025}
    return ["train", "--recipe", "baseline", "--scale", "tiny", "--data", str(SP1024_DIR), "--tokenizer",
            str(SP1024_MODEL), "--out", str(out), "--device", "cpu", "--quiet",
            *sum((["--set", f"{k}={v}"] for k, v in sets.items()), [])]


def _wait_for_steps(log: Path, procs: list[subprocess.Popen], steps: int = 2, limit_s: float = 180) -> None:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if len(read_log(log)) >= steps:
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"a rank exited before training ({p.returncode}): {p.stderr.read()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError("the 2-rank run did not start training in time")


def _collect(proc: subprocess.Popen, limit_s: float) -> tuple[float, str]:
    """(seconds until `proc` exited, its stderr); fails if it is still running after limit_s."""
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the surviving process hung for more than {limit_s} s")
    return time.monotonic() - start, err


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
            except ProcessLookupError:
                pass
        p.wait()


@pytest.mark.slow
@pytest.mark.usefixtures("shared_data")
class TestDistributed:
    TIMEOUT_S = 10  # PGOLF_COLLECTIVE_TIMEOUT_S for these runs
    BOUND_S = 90  # the survivor must be gone this long after its peer died or hung

    def _launch_two(self, out: Path) -> list[subprocess.Popen]:
        port = _free_port()
        procs = []
        for rank in range(2):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "RANK": str(rank),
                   "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port), "PGOLF_COLLECTIVE_TIMEOUT_S": str(self.TIMEOUT_S)}
            procs.append(subprocess.Popen([sys.executable, "-m", "pgolf", *_train_args(out)], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        return procs

    @pytest.mark.parametrize("how", ["killed", "hung"])
    def test_survivor_exits_non_zero_with_a_message_when_its_peer_dies_or_hangs(self, tmp_path, how):
        procs = self._launch_two(tmp_path / "run")
        try:
            _wait_for_steps(tmp_path / "run" / "log.jsonl", procs)
            os.kill(procs[1].pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
            seconds, err = _collect(procs[0], self.BOUND_S)
        finally:
            _stop_all(procs)
        assert procs[0].returncode not in (0, None)
        assert "pgolf: error: rank 0 of 2 lost contact with the other processes" in err, err[-3000:]
        assert "PGOLF_COLLECTIVE_TIMEOUT_S = 10 s" in err and "Traceback" not in err
        if how == "hung":  # only the collective timeout can end this wait
            assert seconds >= self.TIMEOUT_S - 1

    def test_torchrun_run_with_a_killed_rank_ends_non_zero_and_says_so(self, tmp_path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"),
               "PGOLF_COLLECTIVE_TIMEOUT_S": str(self.TIMEOUT_S)}
        launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                     "-m", "pgolf", *_train_args(tmp_path / "run")], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for_steps(tmp_path / "run" / "log.jsonl", [launcher])
            children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
            ranks = {int(c): Path(f"/proc/{c}/environ").read_bytes().split(b"\0") for c in children}
            victim = next(pid for pid, env_items in ranks.items() if b"RANK=1" in env_items)
            os.kill(victim, signal.SIGKILL)
            _, err = _collect(launcher, self.BOUND_S)
        finally:
            _stop_all([launcher])
        assert launcher.returncode != 0
        assert "rank      : 1" in err and "SIGKILL" in err, err[-3000:]  # torchrun's failure report names the rank
