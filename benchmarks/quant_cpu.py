"""Quantization benchmark: export policies x containers x compressors on one trained CPU-scale model.

Trains `baseline --scale tiny` once (DESIGN.md's CPU reference scale: 4 x 256, 300 steps on the FineWeb
sample; quant.passthrough_max_numel = 4096 so every matrix is quantized) — or reuses the run in --run-dir —
then for every policy (bits x scale rule) measures:
  - the round-trip val_bpb cost: val_bpb of the model unpacked from a written artifact minus the
    full-precision model's val_bpb, both on the first --val-tokens validation tokens;
  - for every container (one int8 byte per code, or sub-byte codes bit-packed) and compressor: the model
    bytes, bits per parameter, pack seconds (quantize + compress + write), and the compressed size of the
    code stream alone in bits per code next to the codes' empirical order-0 entropy (per tensor, weighted),
    i.e. how close each compressor gets to that bound.

    python benchmarks/quant_cpu.py [--run-dir /tmp/pgolf_quant_cpu] [--val-tokens 131072]
                                   [--out benchmarks/results/quant_cpu.json]

Timings come from a shared 2-core machine: they are noisy.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pgolf
from pgolf.cli.repack import calibration_loader, load_run
from pgolf.config import apply_overrides, finalize
from pgolf.data.dataset import Dataset, load_validation
from pgolf.data.shards import find_shards
from pgolf.data.tokenizer import byte_tables, load_tokenizer
from pgolf.quant.compress import byte_shuffle, compress
from pgolf.quant.container import encode_payload, write_container
from pgolf.quant.gptq import collect_hessians
from pgolf.quant.layout import QuantizedTensor, artifact_layout, encode_tensors, lqer_picks, quantize_model, serialize
from pgolf.quant.pergroup import split_streams
from pgolf.quant.methods import code_entropy_bits
from pgolf.quant.pack import header_of
from pgolf.training.runs import save_config, write_json

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
DATA = SHARED / "datasets" / "fineweb10B_sp1024_sample"
TOKENIZER = SHARED / "tokenizers" / "fineweb_1024_bpe.model"

_PR1855 = {"quant.matrix_bits": 6, "quant.method": "gptq", "quant.embed_method": "gptq", "quant.embed_bits": 7,
           "quant.sdclip_k_attn": 13.0, "quant.sdclip_k_mlp": 11.5, "quant.sdclip_k_embed": 14.0}
# name -> quant overrides (on top of the baseline's int8 percentile policy; embeddings stay int8 unless said)
POLICIES: dict[str, dict[str, Any]] = {
    "int8 percentile (baseline)": {},
    "int6 percentile": {"quant.matrix_bits": 6},
    "int6 clip_search": {"quant.matrix_bits": 6, "quant.method": "clip_search"},
    "int6 sdclip k12.85": {"quant.matrix_bits": 6, "quant.method": "sdclip"},
    "int6 gptq k12.85": {"quant.matrix_bits": 6, "quant.method": "gptq"},
    "int6 sdclip k12.85 + emb sdclip k20": {"quant.matrix_bits": 6, "quant.method": "sdclip", "quant.embed_method": "sdclip"},
    "int6 gptq k12.85 + emb gptq k20": {"quant.matrix_bits": 6, "quant.method": "gptq", "quant.embed_method": "gptq"},
    "int5 sdclip k12.85": {"quant.matrix_bits": 5, "quant.method": "sdclip"},
    "int5 mlp / int6 attn rowmax (#595)": {"quant.attn_bits": 6, "quant.mlp_bits": 5, "quant.method": "rowmax",
                                           "quant.scale_floor": False},
    "int5 percentile": {"quant.matrix_bits": 5},
    "int5 clip_search (#1573)": {"quant.matrix_bits": 5, "quant.method": "clip_search",
                                 "quant.clip_search_percentiles": [99.9, 99.95, 99.99, 100.0]},
    "int5 gptq k12.85": {"quant.matrix_bits": 5, "quant.method": "gptq"},
    "int4 clip_search": {"quant.matrix_bits": 4, "quant.method": "clip_search"},
    "int4 gptq k12.85": {"quant.matrix_bits": 4, "quant.method": "gptq"},
    # #1855's switches (issue 22): per-class k (#1586), int7 embedding, LQER (#1797)
    "int6 sdclip per-class k (attn 13 / mlp 11.5, #1586)": {"quant.matrix_bits": 6, "quant.method": "sdclip",
                                                            "quant.sdclip_k_attn": 13.0, "quant.sdclip_k_mlp": 11.5},
    "int6 gptq per-class k + emb int7 gptq k14 (#1855)": _PR1855,
    "int6 gptq per-class k + emb int7 gptq k14 + LQER r4 top3 (#1797)": {**_PR1855, "quant.lqer_rank": 4},
    "int4 gptq k12.85 + LQER r4 top3": {"quant.matrix_bits": 4, "quant.method": "gptq", "quant.lqer_rank": 4},
}
COMPRESSORS = ("zlib", "lzma", "zstd", "brotli")
# quant.compressor = pergroup (#1855): (name, codec, simsort_groups or None for the default three)
PERGROUP = (("pergroup+brotli", "brotli", None), ("pergroup+lrzip", "lrzip", None),
            ("pergroup+lrzip unsorted", "lrzip", []))


def train_or_reuse(run_dir: Path, steps: int = 300) -> dict[str, Any]:
    """Train the reference model into run_dir unless its model.safetensors is already there."""
    if (run_dir / "model.safetensors").is_file():
        print(f"reusing {run_dir}", flush=True)
    else:
        overrides = {"data.path": str(DATA), "data.tokenizer": str(TOKENIZER), "quant.passthrough_max_numel": 4096,
                     "train.steps": steps, "data.val_tokens_limit": 0}
        cfg = pgolf.load_recipe("baseline", scale="tiny", overrides=overrides)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SystemExit(f"{run_dir} exists without model.safetensors; remove it or pick another --run-dir")
        pgolf.train(cfg, run_dir, progress=True)
    result_path = run_dir / "result.json"
    return json.loads(result_path.read_text()) if result_path.is_file() else {}


def validation(cfg: pgolf.Config, limit: int):
    folder = Path(cfg.data.path)
    val_files = find_shards(folder, cfg.data.val_pattern, "validation")
    sp = load_tokenizer(cfg.data.tokenizer)
    dataset = Dataset(folder, [], val_files, Path(cfg.data.tokenizer), int(sp.vocab_size()))
    return load_validation(dataset, cfg.model.vocab_size, limit), byte_tables(sp, cfg.model.vocab_size)


def eval_bpb(model: torch.nn.Module, cfg: pgolf.Config, tokens: np.ndarray, tables) -> float:
    from pgolf.training.loop import plain_eval_config
    return pgolf.evaluate(model, tokens, None, plain_eval_config(cfg), tables=tables).val_bpb


def with_layout(tensors: list[QuantizedTensor], cfg) -> list[QuantizedTensor]:
    """The same codes, values (and LQER factors) stored under another config's layout (bit_pack, pergroup)."""
    return [replace(t, layout=layout) for t, layout in zip(tensors, artifact_layout(cfg, lqer_picks(tensors)))]


def code_stream_bytes(tensors: list[QuantizedTensor], compressor: str, shuffle: bool) -> int:
    """Compressed bytes of the code parts alone (int8 or bit-packed), in artifact order."""
    raw = b"".join(data for t in tensors for spec, data in zip(t.layout.parts, t.part_bytes())
                   if spec.kind in ("codes", "packed_codes"))
    return len(compress(byte_shuffle(raw) if shuffle else raw, compressor))


def write(path: Path, tensors: list[QuantizedTensor], cfg, compressor: str, shuffle: bool) -> dict[str, Any]:
    """The artifact exactly as pgolf.pack writes it, for these already quantized tensors (with 'payload')."""
    parts = serialize(tensors)
    if cfg.quant.compressor == "pergroup":
        payload, used = encode_tensors(tensors, cfg)
    else:
        payload, used = encode_payload(parts, compressor, shuffle)
    return {**write_container(path, header_of(cfg, lqer_picks(tensors)), parts, payload, used, shuffle),
            "payload": payload}


def measure_policy(name: str, overrides: dict[str, Any], model, tokens, tables, prequant: float,
                   calib_batches: int, workdir: Path, pergroup_codecs: bool = False) -> dict[str, Any]:
    """Quantize once under the policy; score its artifact; then every container x compressor."""
    cfg = finalize(apply_overrides(pgolf.load_config(workdir / "config.toml"), overrides))
    gptq = "gptq" in (cfg.quant.method, cfg.quant.embed_method)
    if gptq:
        cfg.quant.gptq_calib_batches = calib_batches
    start = time.perf_counter()
    hessians = None
    if gptq:
        hessians = collect_hessians(model, calibration_loader(cfg), cfg, torch.device("cpu"))
    hessian_s = time.perf_counter() - start
    start = time.perf_counter()
    tensors = quantize_model(model, cfg, hessians)          # int8 container (bit_pack off)
    quantize_s = time.perf_counter() - start
    codes = [torch.from_numpy(t.codes.reshape(-1).copy()) for t in tensors if t.codes is not None]
    n_codes = sum(c.numel() for c in codes)
    entropy_per_tensor = sum(code_entropy_bits(c) * c.numel() for c in codes) / n_codes
    entropy_pooled = code_entropy_bits(torch.cat(codes))
    n_params = sum(p.numel() for p in model.parameters())
    min_bits = min(t.layout.plan.bits for t in tensors if t.codes is not None)

    # the round trip: write the artifact exactly as pgolf.pack does, read it back, score it
    zlib_cfg = finalize(apply_overrides(copy.deepcopy(cfg), {"quant.compressor": "zlib"}))
    write(workdir / "policy.pgolf", tensors, zlib_cfg, "zlib", False)
    loaded, _ = pgolf.unpack(workdir / "policy.pgolf")
    roundtrip = eval_bpb(loaded, cfg, tokens, tables)
    row: dict[str, Any] = {
        "policy": name, "overrides": overrides, "params": n_params, "quantized_codes": n_codes,
        "entropy_bits_per_code": entropy_per_tensor, "entropy_pooled_bits_per_code": entropy_pooled,
        "val_bpb_roundtrip": roundtrip, "delta_bpb": roundtrip - prequant,
        "hessian_seconds": hessian_s, "quantize_seconds": quantize_s, "containers": [],
        "lqer_tensors": len(lqer_picks(tensors)),
        "lqer_raw_bytes": sum(a.nbytes for t in tensors if t.lqer is not None for a in t.lqer.values()),
    }
    containers = [("int8", tensors, cfg, False, quantize_s)]
    if min_bits < 8:
        packed_cfg = finalize(apply_overrides(copy.deepcopy(cfg), {"quant.bit_pack": True}))
        containers.append(("bitpacked", with_layout(tensors, packed_cfg), packed_cfg, False, quantize_s))
    containers.append(("int8+shuffle", tensors, cfg, True, quantize_s))
    for container, stored, container_cfg, shuffle, prep_s in containers:
        for compressor in COMPRESSORS:
            if shuffle and compressor != "brotli":
                continue  # the stride-2 byte shuffle is #1536's companion of brotli
            start = time.perf_counter()
            written = write(workdir / "c.pgolf", stored, container_cfg, compressor, shuffle)
            pack_s = hessian_s + prep_s + time.perf_counter() - start
            codes_bytes = code_stream_bytes(stored, compressor, shuffle)
            row["containers"].append({
                "container": container, "compressor": compressor, "model_bytes": written["model_bytes"],
                "bits_per_param": 8 * written["model_bytes"] / n_params, "pack_seconds": pack_s,
                "codes_compressed_bytes": codes_bytes, "codes_bits_per_code": 8 * codes_bytes / n_codes,
                "codes_vs_entropy": (8 * codes_bytes / n_codes) / entropy_per_tensor,
            })
            print(f"  {name:<36} {container:<13} {compressor:<7} {written['model_bytes']:>9,} B  "
                  f"codes {8 * codes_bytes / n_codes:.3f} b/code (H {entropy_per_tensor:.3f})  {pack_s:.1f} s", flush=True)
    if pergroup_codecs:
        for label, codec, groups in PERGROUP:
            if codec == "lrzip" and shutil.which("lrzip") is None:
                print(f"  {label}: skipped, lrzip is not installed (apt-get install lrzip)", flush=True)
                continue
            over = {"quant.compressor": "pergroup", "quant.pergroup_codec": codec}
            if groups is not None:
                over["quant.simsort_groups"] = groups
            group_cfg = finalize(apply_overrides(copy.deepcopy(cfg), over))
            stored = with_layout(tensors, group_cfg)
            start = time.perf_counter()
            written = write(workdir / "c.pgolf", stored, group_cfg, "pergroup", False)
            pack_s = hessian_s + quantize_s + time.perf_counter() - start
            n_groups = len({p.group for t in stored for p in t.layout.parts if p.group})
            streams = [len(x) for x in split_streams(written["payload"], n_groups + 2)]
            check = pgolf.unpack(workdir / "c.pgolf")[0].state_dict()   # the round trip is exact
            assert all(torch.equal(check[k], v) for k, v in loaded.state_dict().items()), label
            codes_bytes = sum(streams[:-2])
            row["containers"].append({
                "container": "int8 groups", "compressor": label, "model_bytes": written["model_bytes"],
                "bits_per_param": 8 * written["model_bytes"] / n_params, "pack_seconds": pack_s,
                "codes_compressed_bytes": codes_bytes, "codes_bits_per_code": 8 * codes_bytes / n_codes,
                "codes_vs_entropy": (8 * codes_bytes / n_codes) / entropy_per_tensor,
                "row_order_bytes": streams[-1], "remainder_bytes": streams[-2],
            })
            print(f"  {name:<36} {'int8 groups':<13} {label:<7} {written['model_bytes']:>9,} B  "
                  f"codes {8 * codes_bytes / n_codes:.3f} b/code, row orders {streams[-1]:,} B  {pack_s:.1f} s", flush=True)
    return row


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Round-trip delta on the first {report['val_tokens_limit']:,} validation tokens "
             f"(pre-quant val_bpb {report['val_bpb_prequant_subset']:.4f} there); "
             f"H = order-0 entropy of the codes (per tensor); codes = compressed code stream alone.", "",
             "| policy | container | compressor | model bytes | bits/param | codes bits/code | H bits/code | "
             "codes / H | Δ val_bpb | pack s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["policies"]:
        for c in row["containers"]:
            lines.append(f"| {row['policy']} | {c['container']} | {c['compressor']} | {c['model_bytes']:,} | "
                         f"{c['bits_per_param']:.3f} | {c['codes_bits_per_code']:.3f} | "
                         f"{row['entropy_bits_per_code']:.3f} | {c['codes_vs_entropy']:.3f} | "
                         f"{row['delta_bpb']:+.4f} | {c['pack_seconds']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=str(Path(tempfile.gettempdir()) / "pgolf_quant_cpu"),
                        help="trained run to reuse (trained here first if it holds no model.safetensors)")
    parser.add_argument("--val-tokens", type=int, default=131072,
                        help="validation tokens for the per-policy deltas (0 = the whole split)")
    parser.add_argument("--calib-batches", type=int, default=16, help="GPTQ calibration batches (4,096 tokens each)")
    parser.add_argument("--policies", nargs="*", help="only these policy names (default: all)")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps of the reference model")
    parser.add_argument("--pergroup", action="store_true",
                        help="also quant.compressor = pergroup (brotli, lrzip, lrzip without row sorting; slow)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quant_cpu.json"))
    args = parser.parse_args()
    if not DATA.is_dir() or not TOKENIZER.is_file():
        print(f"needs the FineWeb sample at {DATA} and {TOKENIZER}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    run_dir = Path(args.run_dir)
    train_result = train_or_reuse(run_dir, args.train_steps)
    model, cfg = load_run(run_dir)
    cfg.data.path, cfg.data.tokenizer = str(DATA), str(TOKENIZER)  # the same data, wherever the run was started
    cfg.quant.passthrough_max_numel = 4096  # a reused run may have kept more tensors in fp16: quantize every matrix
    tokens, tables = validation(cfg, args.val_tokens)
    prequant = eval_bpb(model, cfg, tokens, tables)
    print(f"pre-quant val_bpb on {tokens.size:,} tokens: {prequant:.4f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        save_config(cfg, workdir / "config.toml")
        for name, overrides in POLICIES.items():
            if args.policies and name not in args.policies:
                continue
            rows.append(measure_policy(name, overrides, model, tokens, tables, prequant, args.calib_batches, workdir,
                                       args.pergroup))
    report = {
        "benchmark": "quant_cpu",
        "command": "python benchmarks/quant_cpu.py " + " ".join(sys.argv[1:]),
        "model": f"baseline --scale tiny (4 x 256, {args.train_steps} steps, FineWeb sp1024 sample), quant.passthrough_max_numel=4096",
        "params": sum(p.numel() for p in model.parameters()),
        "train_result": {k: train_result.get(k) for k in ("val_bpb", "val_bpb_prequant", "model_bytes", "artifact_bytes",
                                                          "steps", "train_seconds", "val_targets")},
        "val_tokens_limit": args.val_tokens, "val_targets_scored": int(tokens.size - 1),
        "val_bpb_prequant_subset": prequant, "gptq_calib_batches": args.calib_batches,
        "gptq_calib_tokens": args.calib_batches * cfg.train.batch_tokens,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "note": "shared 2-core CPU: seconds are noisy",
        "policies": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), report)
    print(markdown(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
