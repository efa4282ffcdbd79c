"""Artifact size estimates from a config alone, before any training.

An artifact is code + container overhead + compressed payload. The first two are exact: the code is the
config's own train_gpt.py (`sizes.runtime_code_bytes`), the overhead is the framing and header pgolf will
write for this config (`quant.pack.header_bytes`: the compressed config and one check per part).
Only the payload is estimated: each tensor is costed by its export plan (`quant.layout.artifact_layout`, the
same plan the packer uses): b-bit codes at about (b - 0.7) bits per value after compression with
row-max/percentile scales (measured: int8 7.3, int6 5.25, int5 4.2 bits; TECHNIQUES.md Appendix A), one bit
less with a clip search, and for k-sigma scales (SDClip, GPTQ) the entropy of a Gaussian quantized with step
k*sigma/clip_max: log2(clip_max / k) + 2.05 bits; plus fp16 row scales, and passthrough floats at the bits a
float takes under the config's compressor (FLOAT_BITS, measured on Gaussian noise). With quant.compressor =
pergroup and the lrzip codec the codes cost PERGROUP_LRZIP_CODE_FACTOR of that (#1855's reported gain over brotli).
A guide for planning, not a measurement: the real size is measured on the bytes written.
"""

from __future__ import annotations

import math
from typing import Any

from ..config import Config, ConfigError
from ..quant.container import FRAMING_BYTES
from ..quant.layout import artifact_layout
from ..quant.pack import header_bytes
from ..quant.quantize import clip_max, method_for, sdclip_k_for
from .sizes import LIMIT_BYTES, runtime_code_bytes

FAR_OVER_BYTES = 24_000_000  # configs estimated beyond 1.5x the limit are rejected unless quant.allow_over_budget


def bits_per_code(bits: int, qclass: str, cfg: Config) -> float:
    """Expected compressed bits of one b-bit code under the tensor's scale rule."""
    method = method_for(qclass, cfg.quant)
    if method in ("sdclip", "gptq"):
        k = sdclip_k_for(qclass, cfg.quant)
        return min(bits - 0.7, math.log2(clip_max(bits) / k) + 2.05)
    return bits - (1.0 if method == "clip_search" else 0.7)


# Compressed bits of one stored float, measured on Gaussian noise (2**20 values; the same within 0.15 bit at
# std 1 and 0.02: a float's exponent and mantissa bits do not depend on the scale): (compressor, byte shuffle).
FLOAT_BITS = {
    "float16": {("none", False): 16.0, ("zlib", False): 14.76, ("lzma", False): 14.29, ("zstd", False): 14.71,
                ("brotli", False): 14.16, ("brotli", True): 13.51},
    "float32": {("none", False): 32.0, ("zlib", False): 29.64, ("lzma", False): 29.61, ("zstd", False): 29.59,
                ("brotli", False): 29.36, ("brotli", True): 27.64},
}


def float_bits(dtype: str, cfg: Config) -> float:
    """Expected compressed bits of one passthrough float under the config's compressor ('auto': the best)."""
    table = FLOAT_BITS.get(dtype, FLOAT_BITS["float32"])
    compressor = "brotli" if cfg.quant.compressor == "pergroup" else cfg.quant.compressor  # pergroup: brotli remainder
    methods = [m for m, _ in table if m != "none"] if compressor == "auto" else [compressor]
    bits = [table.get((m, cfg.quant.byte_shuffle), table.get((m, False))) for m in methods]
    return min(b for b in bits if b is not None)


# quant.compressor = pergroup with quant.pergroup_codec = lrzip: the codes' share of the brotli-rate estimate. The one
# full-size figure is #1855's README: per-group lrzip made its artifact "~280 KB smaller than COMPRESSOR=brotli",
# its seed-42 blob being 15,865,260 bytes, so lrzip = 15,865,260 / (15,865,260 + 280,000) of brotli (-1.7 %).
# pgolf's tiny measurement (benchmarks/results/quant_cpu_1855.md, #1855's policy) saves more, 3.2 % (922,543 vs
# 953,519 bytes); the smaller full-size figure is kept. 'auto' and the brotli codec are priced at the brotli rate
# (the estimate does not depend on whether this machine has lrzip).
PERGROUP_LRZIP_CODE_FACTOR = 15_865_260 / (15_865_260 + 280_000)


def code_factor(cfg: Config) -> float:
    """Multiplier on the estimated compressed bits of integer codes for the config's compressor."""
    q = cfg.quant
    return PERGROUP_LRZIP_CODE_FACTOR if q.compressor == "pergroup" and q.pergroup_codec == "lrzip" else 1.0


LQER_CODE_BITS = {"lqer_a_codes": 2, "lqer_b_codes": 4}  # asym packing; the symmetric one counted the same way


def estimate_payload_bytes(cfg: Config) -> int:
    """Estimated compressed payload (codes, scales, stored floats, LQER factors) of `cfg`'s artifact; LQER is
    counted on the first quant.lqer_top_k integer-coded tensors (the real picks depend on the weights)."""
    total = 0.0
    lqer_left = cfg.quant.lqer_top_k if cfg.quant.lqer_rank else 0
    factor = code_factor(cfg)
    for t in artifact_layout(cfg):
        numel = math.prod(t.shape)
        if t.plan.encoding == "int":
            rows = t.parts[1].shape[0]
            total += numel * bits_per_code(t.plan.bits, t.qclass, cfg) * factor / 8 + 2 * rows
            if lqer_left:
                lqer_left -= 1
                r = min(cfg.quant.lqer_rank, rows, numel // rows)
                total += (rows * r * LQER_CODE_BITS["lqer_a_codes"] + r * (numel // rows) * LQER_CODE_BITS["lqer_b_codes"]) / 8
                total += 2 * (1 + r * (numel // rows) // cfg.quant.lqer_group)
        else:
            total += numel * float_bits("float32" if t.plan.encoding in ("float32", "raw") else "float16", cfg) / 8
    return int(total)


def estimate_breakdown(cfg: Config) -> dict[str, Any]:
    """Code and header bytes (exact), payload (estimated), their sum and the margin to the limit."""
    code, header, payload = runtime_code_bytes(cfg), header_bytes(cfg), estimate_payload_bytes(cfg)
    model = FRAMING_BYTES + header + payload
    return {"code_bytes": code, "header_bytes": header, "framing_bytes": FRAMING_BYTES,
            "payload_bytes_estimate": payload, "model_bytes_estimate": model, "artifact_bytes_estimate": code + model,
            "limit_bytes": LIMIT_BYTES, "margin_bytes": LIMIT_BYTES - code - model}


def estimate_artifact_bytes(cfg: Config) -> int:
    return estimate_breakdown(cfg)["artifact_bytes_estimate"]


def check_budget(cfg: Config) -> None:
    """Refuse a config whose model alone is estimated far over the limit (unless quant.allow_over_budget): called
    by whoever finalizes a run — the trainer, the command line, the API's load_recipe / load_config (a generated
    train_gpt.py carries none of this module: its config was checked when it was built, and the environment
    cannot change its size, pgolf.training.bundle_entry.RUNTIME_KEYS). Code is not counted here: it is small next to the margin, and pricing it would bundle pgolf's
    sources for every config loaded."""
    if cfg.quant.allow_over_budget:
        return
    estimate = FRAMING_BYTES + header_bytes(cfg) + estimate_payload_bytes(cfg)
    if estimate > FAR_OVER_BYTES:
        raise ConfigError(
            f"estimated artifact of {estimate:,} bytes (before code) is far over the 16,000,000-byte limit: shrink "
            f"'model.num_layers' / 'model.model_dim' / 'model.mlp_mult' or lower 'quant.matrix_bits' "
            f"(or set quant.allow_over_budget=true to experiment anyway)")
