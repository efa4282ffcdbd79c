"""What an artifact stores where, derived from the config alone, and the tensors in that form.

`artifact_layout(cfg)` builds the config's model on the meta device (nothing allocated) and gives every
parameter its export plan and parts (codes + scales, or stored values) with dtype and shape, in file order: the
container never stores a tensor table, and a crafted header cannot describe arrays the model does not have.
`check_model_request` / `check_param_count` cap what an embedded config may ask for before anything is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..config import Config
from ..config.optional import require_module
from ..model.gpt import GPT
from ..model.layers import qclass_of
from .bitpack import pack_codes, unpack_codes
from .container import HeaderProblem, PartSpec, encode_payload
from .methods import quantize_rows
from .quantize import Plan, as_rows, dequantize, plan_tensor

# What an artifact's embedded config may ask for, checked before anything is built or decompressed. The
# largest recipe has 36 M parameters; 16,000,000 bytes at 0.5 bit per parameter hold 256 M.
MAX_PARAMS = 1 << 28
MAX_LAYERS = 1024            # physical blocks (Python modules built even on the meta device)
MAX_VIRTUAL_LAYERS = 4096    # entries of model.layer_schedule


@dataclass(frozen=True)
class TensorLayout:
    """How one parameter is stored, as the config implies it: plan, parts (in file order), torch dtype."""
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    qclass: str
    plan: Plan
    parts: tuple[PartSpec, ...]


def artifact_layout(cfg: Config, lqer: Sequence[int] = ()) -> list[TensorLayout]:
    """Every parameter of `cfg`'s model (built on the meta device: nothing allocated) with its parts; the
    tensors at the layout positions `lqer` carry LQER correction parts too (checked: `check_lqer_request`)."""
    with torch.device("meta"):
        model = GPT(cfg.model, cfg.data.bos_id)
    lqer = set(lqer)
    out = []
    for index, (name, p) in enumerate(model.named_parameters()):
        qclass = qclass_of(p)
        plan = plan_tensor(p, qclass, cfg.quant, name)
        shape = tuple(p.shape)
        if plan.encoding == "int":
            rows, cols = as_rows(p).shape
            if cfg.quant.bit_pack and plan.bits < 8:
                codes = PartSpec(name, "packed_codes", "uint8", (-(-rows * cols * plan.bits // 8),))
            elif cfg.quant.compressor == "pergroup":
                sort = any(key in name for key in cfg.quant.simsort_groups)
                codes = PartSpec(name, "codes", "int8", (rows, cols), group_of(name), sort)
            else:
                codes = PartSpec(name, "codes", "int8", (rows, cols))
            parts = (codes, PartSpec(name, "scales", "float16", (rows,)))
            if index in lqer:
                parts += require_module("pgolf.quant.lqer", cfg.quant).part_specs(name, rows, cols, cfg.quant)
        elif index in lqer:
            raise ValueError(f"LQER asked for {name}, which is not stored as integer codes")
        else:
            stored = str(p.dtype).removeprefix("torch.") if plan.encoding == "raw" else plan.encoding
            parts = (PartSpec(name, "values", stored, shape),)
        out.append(TensorLayout(name, shape, p.dtype, qclass, plan, parts))
    return out


def layout_parts(layout: list[TensorLayout]) -> list[PartSpec]:
    return [part for t in layout for part in t.parts]


def group_of(name: str) -> str:
    """pergroup code group of a tensor: its name with the block index replaced (blocks.*.mlp.fc.weight)."""
    return re.sub(r"^blocks\.\d+\.", "blocks.*.", name)


def encode_parts(parts: list[bytes], specs: list[PartSpec], cfg: Config) -> tuple[bytes, str]:
    """(payload, compressor used) of the parts under quant.compressor (pergroup: per-group streams)."""
    if cfg.quant.compressor == "pergroup":
        return require_module("pgolf.quant.pergroup", cfg.quant).encode(parts, specs, cfg.quant.pergroup_codec,
                                                                         cfg.quant.byte_shuffle)
    return encode_payload(parts, cfg.quant.compressor, cfg.quant.byte_shuffle)


def encode_tensors(tensors: list[QuantizedTensor], cfg: Config) -> tuple[bytes, str]:
    return encode_parts(serialize(tensors), [p for t in tensors for p in t.layout.parts], cfg)


def check_lqer_request(picks: Any, layout: list[TensorLayout], cfg: Config) -> list[int]:
    """The header's LQER picks (layout positions) if the config allows them, else HeaderProblem: at most
    quant.lqer_top_k distinct, ascending positions of integer-coded tensors, none when quant.lqer_rank = 0."""
    if not isinstance(picks, list) or any(not isinstance(i, int) or isinstance(i, bool) for i in picks):
        raise HeaderProblem(f"'lqer' must be a list of tensor positions, got {str(picks)[:80]}")
    if cfg.quant.lqer_rank == 0:  # folded in a train_gpt.py without LQER: the checks below are then dead
        if picks:
            raise HeaderProblem(f"lists {len(picks)} LQER corrections, but the embedded config has quant.lqer_rank = 0")
        return picks
    if len(picks) > cfg.quant.lqer_top_k or picks != sorted(set(picks)):
        raise HeaderProblem(f"'lqer' must hold at most quant.lqer_top_k = {cfg.quant.lqer_top_k} distinct positions "
                            f"in ascending order, got {str(picks)[:80]}")
    bad = [i for i in picks if not 0 <= i < len(layout) or layout[i].plan.encoding != "int"]
    if bad:
        raise HeaderProblem(f"'lqer' names position {bad[0]}, which is not an integer-coded tensor of the "
                            f"embedded config's model ({len(layout)} tensors)")
    return picks


def check_model_request(raw_config: dict[str, Any]) -> None:
    """HeaderProblem if an embedded config asks for a model beyond the caps, judged from its numbers alone:
    run before the config is validated, since validation builds the model on the meta device, whose cost grows
    with the number of layers and (for some ops) the width. A lower bound of the parameter count is enough:
    every block has a d x d query and output projection, plus the d-wide token embedding and hash table."""
    model = raw_config.get("model")
    if not isinstance(model, dict):
        return  # config validation names what is missing

    def number(key: str, default: int) -> int:
        value = model.get(key, default)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    layers, schedule = number("num_layers", 1), model.get("layer_schedule")
    if layers > MAX_LAYERS:
        raise HeaderProblem(f"embedded config asks for model.num_layers = {layers:,} (at most {MAX_LAYERS:,})")
    if isinstance(schedule, list) and len(schedule) > MAX_VIRTUAL_LAYERS:
        raise HeaderProblem(f"embedded config asks for {len(schedule):,} virtual layers (model.layer_schedule; "
                            f"at most {MAX_VIRTUAL_LAYERS:,})")
    d = number("model_dim", 1)
    at_least = layers * 2 * d * d + number("vocab_size", 1) * d + number("bigram_buckets", 0) * number("bigram_dim", 0)
    if at_least > MAX_PARAMS:
        raise HeaderProblem(f"embedded config describes a model of at least {at_least:,} parameters (model.model_dim "
                            f"= {d:,}, model.num_layers = {layers:,}), more than an artifact may ask for "
                            f"({MAX_PARAMS:,}; quant.allow_over_budget does not lift this)")


def check_param_count(layout: list[TensorLayout]) -> None:
    params = sum(_numel(t.shape) for t in layout)
    if params > MAX_PARAMS:
        raise HeaderProblem(f"embedded config describes a model of {params:,} parameters, more than an artifact may "
                            f"ask for ({MAX_PARAMS:,}; quant.allow_over_budget does not lift this)")


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


# ----------------------------------------------------------------------------- quantize and serialize

@dataclass
class QuantizedTensor:
    """One parameter as stored: int8 codes (rows, cols) + fp16 scales (+ LQER factors), or stored values."""
    layout: TensorLayout
    codes: np.ndarray | None = None
    scales: np.ndarray | None = None
    values: np.ndarray | None = None
    lqer: dict[str, np.ndarray] | None = None

    def part_bytes(self) -> list[bytes]:
        out = []
        for spec in self.layout.parts:
            if spec.kind.startswith("lqer_"):
                out.append(self.lqer[spec.kind].tobytes())
            elif spec.kind == "codes":
                out.append(self.codes.tobytes())
            elif spec.kind == "packed_codes":
                out.append(pack_codes(self.codes, self.layout.plan.bits).tobytes())
            elif spec.kind == "scales":
                out.append(self.scales.tobytes())
            else:
                out.append(self.values.tobytes())
        return out


def quantize_model(model: nn.Module, cfg: Config, hessians: dict[str, Tensor] | None = None) -> list[QuantizedTensor]:
    """Every parameter of `model` under `cfg`'s export policy, in layout order; the model must be cfg's."""
    params = dict(model.named_parameters())
    layout = artifact_layout(cfg)
    if [t.name for t in layout] != list(params) or any(tuple(params[t.name].shape) != t.shape for t in layout):
        raise ValueError("the model's parameters (names, order, shapes) are not those of cfg.model")
    out, errors = [], {}
    for i, t in enumerate(layout):
        w = params[t.name].detach().cpu()
        if t.plan.encoding == "int":
            rows = as_rows(w.float())
            codes, scales = quantize_rows(rows, t.plan.bits, cfg.quant, t.qclass,
                                          None if hessians is None else hessians.get(t.name))
            out.append(QuantizedTensor(t, codes=codes.numpy(), scales=scales.numpy()))
            if cfg.quant.lqer_rank:
                errors[i] = rows - dequantize(codes, scales)  # E = W - W_hat
        elif t.plan.encoding == "raw":
            out.append(QuantizedTensor(t, values=w.numpy()))
        else:
            out.append(QuantizedTensor(t, values=w.to(getattr(torch, t.plan.encoding)).numpy()))
    if cfg.quant.lqer_rank:
        corrections = require_module("pgolf.quant.lqer", cfg.quant).corrections_for(errors, cfg.quant)
        corrected = artifact_layout(cfg, sorted(corrections))
        out = [replace(q, layout=corrected[i], lqer=corrections.get(i)) for i, q in enumerate(out)]
    return out


def lqer_picks(tensors: list[QuantizedTensor]) -> list[int]:
    """Layout positions of the tensors that carry an LQER correction (the header's 'lqer' list)."""
    return [i for i, t in enumerate(tensors) if t.lqer is not None]


def serialize(tensors: list[QuantizedTensor]) -> list[bytes]:
    return [data for t in tensors for data in t.part_bytes()]


def dequantized_state(layout: list[TensorLayout], arrays: dict[tuple[str, str], np.ndarray],
                      cfg: Config) -> dict[str, Tensor]:
    """{name: tensor} from the stored parts; every part's dtype and shape come from the layout."""
    state = {}
    for t in layout:
        if t.plan.encoding == "int":
            rows = t.parts[1].shape[0]
            scales = torch.from_numpy(arrays[(t.name, "scales")].copy())
            if t.parts[0].kind == "packed_codes":
                codes_np = unpack_codes(arrays[(t.name, "packed_codes")], t.plan.bits, _numel(t.shape))
                codes = torch.from_numpy(codes_np.reshape(rows, -1))
            else:
                codes = torch.from_numpy(arrays[(t.name, "codes")].copy())
            w_hat = dequantize(codes, scales)
            if len(t.parts) > 2:  # W_hat + A_q B_q (LQER), in fp32 before the cast
                lqer = require_module("pgolf.quant.lqer", cfg.quant)
                w_hat = w_hat + lqer.correction({k: arrays[(t.name, k)] for k in lqer.KINDS}, cfg.quant)
            state[t.name] = w_hat.reshape(t.shape).to(t.dtype)
        else:
            state[t.name] = torch.from_numpy(arrays[(t.name, "values")].copy()).reshape(t.shape).to(t.dtype)
    return state
