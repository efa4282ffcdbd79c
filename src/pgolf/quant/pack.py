"""Model <-> artifact: quantize each tensor by its class policy, pack, compress, and load back.

The scored model is always the one decompressed from the artifact (`unpack`), never the live weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._version import __version__
from ..config import Config, ConfigError, QuantConfig, config_from_dict, config_to_dict
from ..model.gpt import GPT, build_model
from ..model.layers import qclass_of
from .bitpack import pack_codes, unpack_codes
from .container import ArtifactError, Part, read_container, write_container
from .methods import quantize_rows
from .quantize import Plan, as_rows, dequantize, plan_tensor


def quantize_model(model: nn.Module, qcfg: QuantConfig,
                   hessians: dict[str, Tensor] | None = None) -> tuple[list[Part], dict[str, dict[str, Any]]]:
    """Every parameter as container parts, plus the per-tensor metadata needed to rebuild it."""
    parts: list[Part] = []
    table: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        t = param.detach().cpu()
        qclass = qclass_of(param)
        plan = plan_tensor(t, qclass, qcfg, name)
        entry = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "qclass": qclass,
                 "encoding": plan.encoding, "bits": plan.bits}
        if plan.encoding == "int":
            codes, scales = quantize_rows(as_rows(t.float()), plan.bits, qcfg, qclass,
                                          None if hessians is None else hessians.get(name))
            parts += _code_parts(name, codes, plan, qcfg)
            parts.append(Part(name, "scales", "float16", tuple(scales.shape), scales.numpy().tobytes()))
        elif plan.encoding == "raw":
            arr = t.numpy()
            parts.append(Part(name, "values", str(arr.dtype), tuple(arr.shape), arr.tobytes()))
        else:
            arr = t.to(getattr(torch, plan.encoding)).numpy()
            parts.append(Part(name, "values", plan.encoding, tuple(arr.shape), arr.tobytes()))
        table[name] = entry
    return parts, table


def _code_parts(name: str, codes: Tensor, plan: Plan, qcfg: QuantConfig) -> list[Part]:
    arr = codes.numpy()
    if qcfg.bit_pack and plan.bits < 8:
        packed = pack_codes(arr, plan.bits)
        return [Part(name, "packed_codes", "uint8", (packed.size,), packed.tobytes())]
    return [Part(name, "codes", "int8", tuple(arr.shape), arr.tobytes())]


def dequantized_state(header: dict[str, Any], arrays: dict[tuple[str, str], np.ndarray]) -> dict[str, Tensor]:
    state = {}
    for name, entry in header["meta"]["tensors"].items():
        shape = tuple(entry["shape"])
        dtype = getattr(torch, entry["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"tensor '{name}': {entry['dtype']!r} is not a torch dtype")
        if entry["encoding"] == "int":
            scales = torch.from_numpy(arrays[(name, "scales")].copy())
            if (name, "packed_codes") in arrays:
                codes_np = unpack_codes(arrays[(name, "packed_codes")], entry["bits"], int(np.prod(shape)))
                codes = torch.from_numpy(codes_np.reshape(scales.numel(), -1))
            else:
                codes = torch.from_numpy(arrays[(name, "codes")].copy())
            state[name] = dequantize(codes, scales).reshape(shape).to(dtype)
        else:
            state[name] = torch.from_numpy(arrays[(name, "values")].copy()).reshape(shape).to(dtype)
    return state


def write_artifact(model: nn.Module, cfg: Config, path: str | Path,
                   hessians: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """Quantize, pack and write the weights with their config; {model_bytes, compressor, raw_bytes} as written.

    pgolf.pack (pgolf.artifact.sizes) adds the code bytes and the limit check.
    """
    parts, table = quantize_model(model, cfg.quant, hessians)
    meta = {"pgolf_version": __version__, "config": config_to_dict(cfg), "tensors": table}
    return write_container(path, parts, meta, cfg.quant.compressor, cfg.quant.byte_shuffle)


def unpack(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Config]:
    """Rebuild (model, config) from an artifact. Only JSON and numpy buffers are read; nothing is executed."""
    header, arrays = read_container(path)
    try:
        cfg = config_from_dict(header["meta"]["config"], f"{path} (embedded config)")
        state = dequantized_state(header, arrays)
    except KeyError as exc:
        raise ArtifactError(f"{path}: header: missing entry {exc}") from exc
    except (ConfigError, TypeError, ValueError, RuntimeError, AttributeError) as exc:  # checksummed but ill-formed
        raise ArtifactError(f"{path}: header: the tensor table or embedded config is invalid ({exc})") from exc
    model = build_model(cfg.model, cfg.data.bos_id)
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise ArtifactError(f"{path}: header: tensors do not match the embedded config ({sorted(missing)[:5]})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # a tensor's shape disagrees with the embedded config
        raise ArtifactError(f"{path}: header: tensor shapes do not match the embedded config ({exc})") from exc
    model.set_looping(True)  # an artifact is the final model: looped schedule, as the trainer packs and scores it
    return model.to(device), cfg
