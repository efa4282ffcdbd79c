"""Where the bytes of an artifact go: per tensor class, codes vs scales vs floats, header, code, margin.

A general-purpose compressor works on the whole payload, so bytes cannot be assigned to tensors exactly.
The attribution used here: each (class, part kind) byte stream is compressed ALONE with the artifact's own
compressor (and byte shuffle); `joint_gain_bytes` is what compressing everything together saved on top.
Everything else (framing, the header with the compressed config and part checks, code) is counted exactly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from .compress import byte_shuffle, compress
from .container import FRAMING_BYTES, PERGROUP_COMPRESSORS
from .pack import read_artifact

KIND_GROUPS = {"codes": "codes", "packed_codes": "codes", "scales": "scales", "values": "floats",
               "lqer_a_codes": "lqer", "lqer_a_scales": "lqer", "lqer_b_codes": "lqer", "lqer_b_scales": "lqer"}


def artifact_breakdown(path: str | Path, code_bytes: int, limit_bytes: int) -> dict[str, Any]:
    """Byte accounting of a written artifact against `limit_bytes` (code counted as `code_bytes`)."""
    path = Path(path)
    _, layout, header, arrays = read_artifact(path)
    compressor, shuffle = header["compressor"], header["byte_shuffle"]
    alone_with = "brotli" if compressor in PERGROUP_COMPRESSORS else compressor  # pergroup: brotli stands in
    streams: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    classes: dict[str, dict[str, Any]] = {}
    for t in layout:
        for part in t.parts:
            streams[(t.qclass, KIND_GROUPS[part.kind])].append(arrays[(t.name, part.kind)].tobytes())
        row = classes.setdefault(t.qclass, {"tensors": 0, "params": 0, "encodings": set(), "raw_bytes": 0,
                                            "codes_bytes": 0, "scales_bytes": 0, "floats_bytes": 0,
                                            "lqer_bytes": 0})
        row["tensors"] += 1
        row["params"] += math.prod(t.shape)
        row["encodings"].add(f"int{t.plan.bits}" if t.plan.encoding == "int" else t.plan.encoding)
    for (qclass, group), chunks in streams.items():
        raw = b"".join(chunks)
        body = byte_shuffle(raw) if shuffle else raw
        classes[qclass]["raw_bytes"] += len(raw)
        classes[qclass][f"{group}_bytes"] += len(compress(body, alone_with))
    for row in classes.values():
        row["encodings"] = sorted(row["encodings"])
        row["compressed_bytes"] = row["codes_bytes"] + row["scales_bytes"] + row["floats_bytes"] + row["lqer_bytes"]
        row["bits_per_param"] = 8 * row["compressed_bytes"] / max(row["params"], 1)
    file_bytes = path.stat().st_size
    payload_bytes = header["payload_bytes"]
    attributed = sum(row["compressed_bytes"] for row in classes.values())
    total = file_bytes + code_bytes
    return {
        "artifact": str(path), "compressor": compressor, "byte_shuffle": shuffle, "classes": classes,
        "attributed_with": alone_with,
        "payload_bytes": payload_bytes, "attributed_bytes": attributed, "joint_gain_bytes": attributed - payload_bytes,
        "header_bytes": header["header_bytes"], "framing_bytes": FRAMING_BYTES, "model_bytes": file_bytes,
        "code_bytes": code_bytes, "artifact_bytes": total, "limit_bytes": limit_bytes,
        "margin_bytes": limit_bytes - total, "under_limit": total <= limit_bytes,
        "params": sum(row["params"] for row in classes.values()),
    }


def format_breakdown(b: dict[str, Any]) -> str:
    """A plain-text table of `artifact_breakdown`."""
    lines = [f"{b['artifact']}: {b['compressor']}{' + byte shuffle' if b['byte_shuffle'] else ''}",
             f"{'class':<9} {'tensors':>7} {'params':>11} {'stored as':<16} {'codes':>11} {'scales':>9} "
             f"{'floats':>11} {'bits/param':>10}"]
    for qclass, row in sorted(b["classes"].items(), key=lambda kv: -kv[1]["compressed_bytes"]):
        lines.append(f"{qclass:<9} {row['tensors']:>7} {row['params']:>11,} {'/'.join(row['encodings']):<16} "
                     f"{row['codes_bytes']:>11,} {row['scales_bytes']:>9,} {row['floats_bytes']:>11,} "
                     f"{row['bits_per_param']:>10.3f}" + (f"  (LQER factors {row['lqer_bytes']:,})" if row["lqer_bytes"] else ""))
    lines += [
        f"each class/part compressed alone ({b['attributed_with']}): {b['attributed_bytes']:,} bytes in all; the joint payload is "
        f"{b['payload_bytes']:,} ({b['payload_bytes'] - b['attributed_bytes']:+,} against that sum)",
        f"header {b['header_bytes']:,} (compressed config + part checks) + framing {b['framing_bytes']} + payload "
        f"{b['payload_bytes']:,} "
        f"= model {b['model_bytes']:,} bytes ({8 * b['model_bytes'] / max(b['params'], 1):.3f} bits/param)",
        f"code {b['code_bytes']:,} -> artifact {b['artifact_bytes']:,} of {b['limit_bytes']:,}: "
        + (f"{b['margin_bytes']:,} bytes to spare" if b["under_limit"]
           else f"OVER THE LIMIT by {-b['margin_bytes']:,} bytes"),
    ]
    return "\n".join(lines)
