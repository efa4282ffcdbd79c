"""The challenge's own artifact, scored on a pgolf recipe's model: `pgolf eval final_model.int8.ptz --recipe baseline`.

The baseline train_gpt.py of openai/parameter-golf writes `final_model.int8.ptz` = zlib(torch.save(obj)), obj a
dict in its "int8_clean_per_row_v1" format:
- "quantized": {name: int8 tensor}, "scales": {name: per-row (fp16, one per row) or per-tensor (0-d) scale},
  "dtypes": {name: the float dtype the tensor had}, "qmeta" (optional): {name: {"scheme": "per_row", ...}};
- "passthrough": {name: tensor kept as is (small tensors as fp16)}, "passthrough_orig_dtypes" (optional):
  {name: the dtype to restore}.
A value is q * scale (per row broadcast over the trailing dims), cast to its recorded dtype.

Reading it runs no code from the file: the decompressed size is bounded first, then torch.load(weights_only=True)
(tensors and plain containers only; any other pickled object is refused), then every entry is checked. Names map
onto pgolf's baseline model one to one except the embedding ("tok_emb.weight" -> "tok_emb"); the model's widths
come from the tensors (layers, width, heads from q_gain, KV heads from c_k, MLP width from mlp.fc), the rest of
the model from the recipe.
"""

from __future__ import annotations

import io
import pickle
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import Config, ConfigError, load_recipe
from ..model.gpt import GPT, build_model
from ..quant.container import MAGIC

FORMAT = "int8_clean_per_row_v1"
MAX_DECOMPRESSED_BYTES = 1 << 30  # a 16 MB artifact of int8 codes decompresses to ~20 MB; zlib bombs stop here
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
RECIPES = ("baseline",)  # the recipes whose model the challenge format maps onto
NAME_MAP = {"tok_emb.weight": "tok_emb"}  # challenge name -> pgolf name; every other name is the same


class ChallengeFormatError(ValueError):
    """A file is not a well-formed challenge artifact; the message names the file and the entry."""


def file_kind(path: str | Path) -> str:
    """'pgolf' (pgolf's magic, any container version), 'zlib' (a zlib stream: the challenge's .ptz), else 'other'
    (missing files included: the loaders' own errors name them)."""
    path = Path(path)
    if not path.is_file():
        return "other"
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) - 1)
    if head == MAGIC[:-1]:
        return "pgolf"
    return "zlib" if len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0 else "other"


def read_challenge_object(path: str | Path, max_bytes: int = MAX_DECOMPRESSED_BYTES) -> dict[str, Any]:
    """The dict inside a challenge artifact: zlib-decompressed (at most max_bytes), then torch.load(weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise ChallengeFormatError(f"{path}: challenge artifact not found")
    blob = path.read_bytes()
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(blob, max_bytes + 1)
    except zlib.error as exc:
        raise ChallengeFormatError(f"{path}: not zlib data ({exc}); a challenge artifact is zlib(torch.save(...)) "
                                   "as the baseline's final_model.int8.ptz") from None
    if len(raw) > max_bytes or inflate.unconsumed_tail:
        raise ChallengeFormatError(f"{path}: decompresses to more than {max_bytes:,} bytes; refused")
    if not inflate.eof:
        raise ChallengeFormatError(f"{path}: the zlib stream is truncated ({len(blob):,} bytes read)")
    if inflate.unused_data:
        raise ChallengeFormatError(f"{path}: {len(inflate.unused_data):,} bytes follow the zlib stream")
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ChallengeFormatError(f"{path}: torch.load(weights_only=True) refused the decompressed bytes: "
                                   f"{first[:300]}") from None
    if not isinstance(obj, dict) or obj.get("__quant_format__") != FORMAT:
        found = obj.get("__quant_format__") if isinstance(obj, dict) else type(obj).__name__
        raise ChallengeFormatError(f"{path}: '__quant_format__' is {found!r}; pgolf reads the baseline's {FORMAT!r}")
    return obj


def _table(obj: dict[str, Any], key: str, path: Path, value_type: type | tuple, required: bool = True) -> dict:
    table = obj.get(key, None if required else {})
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, value_type) for k, v in table.items()):
        raise ChallengeFormatError(f"{path}: '{key}' must be a dict of name -> {getattr(value_type, '__name__', value_type)}")
    return table


def _dtype(name: str, path: Path, where: str) -> torch.dtype:
    if name not in FLOAT_DTYPES:
        raise ChallengeFormatError(f"{path}: {where} is {name!r}; expected one of {', '.join(FLOAT_DTYPES)}")
    return FLOAT_DTYPES[name]


def dequantize_challenge(obj: dict[str, Any], path: str | Path = "<object>") -> dict[str, Tensor]:
    """{challenge name: tensor} from the format's dict (the values its dequantize_state_dict_int8 gives)."""
    path = Path(path)
    quantized = _table(obj, "quantized", path, Tensor)
    scales = _table(obj, "scales", path, Tensor)
    dtypes = _table(obj, "dtypes", path, str)
    passthrough = _table(obj, "passthrough", path, Tensor)
    qmeta = _table(obj, "qmeta", path, dict, required=False)
    orig = _table(obj, "passthrough_orig_dtypes", path, str, required=False)
    out: dict[str, Tensor] = {}
    for name, q in quantized.items():
        if q.dtype != torch.int8 or q.ndim < 1:
            raise ChallengeFormatError(f"{path}: quantized['{name}'] is {q.dtype} of shape {tuple(q.shape)}; expected int8")
        if name not in scales or name not in dtypes:
            raise ChallengeFormatError(f"{path}: quantized['{name}'] has no {'scales' if name not in scales else 'dtypes'} entry")
        s, dtype = scales[name], _dtype(dtypes[name], path, f"dtypes['{name}']")
        if not s.is_floating_point():
            raise ChallengeFormatError(f"{path}: scales['{name}'] is {s.dtype}; expected a float scale")
        if qmeta.get(name, {}).get("scheme") == "per_row" or s.ndim > 0:
            if s.numel() != q.shape[0]:
                raise ChallengeFormatError(f"{path}: scales['{name}'] has {s.numel()} values for {q.shape[0]} rows")
            value = q.float() * s.float().view(q.shape[0], *([1] * (q.ndim - 1)))
        else:
            value = q.float() * float(s.item())
        out[name] = value.to(dtype).contiguous()
    for name, t in passthrough.items():
        if name in out:
            raise ChallengeFormatError(f"{path}: '{name}' is both quantized and passed through")
        out[name] = t.to(_dtype(orig[name], path, f"passthrough_orig_dtypes['{name}']")) if name in orig else t
    return out


def _shape(state: dict[str, Tensor], name: str, ndim: int, path: Path) -> tuple[int, ...]:
    if name not in state or state[name].ndim != ndim:
        raise ChallengeFormatError(f"{path}: needs a {ndim}-d '{name}' to size the baseline model")
    return tuple(state[name].shape)


def challenge_config(state: dict[str, Tensor], recipe: str, path: str | Path = "<object>") -> Config:
    """The recipe's config with the model widths the artifact's tensors have."""
    if recipe not in RECIPES:
        raise ConfigError(f"--recipe {recipe!r}: the challenge's {FORMAT} format maps onto the {', '.join(RECIPES)} "
                          "recipe's model only")
    path = Path(path)
    vocab, dim = _shape(state, "tok_emb.weight", 2, path)
    layers = 1 + max((int(n.split(".")[1]) for n in state if n.startswith("blocks.") and n.split(".")[1].isdigit()),
                     default=-1)
    heads = _shape(state, "blocks.0.attn.q_gain", 1, path)[0]
    kv_dim = _shape(state, "blocks.0.attn.c_k.weight", 2, path)[0]
    hidden = _shape(state, "blocks.0.mlp.fc.weight", 2, path)[0]
    if layers < 1 or dim % heads or kv_dim % (dim // heads):
        raise ChallengeFormatError(f"{path}: widths do not fit a baseline model (d={dim}, {heads} heads, c_k {kv_dim})")
    overrides = {"model.vocab_size": vocab, "model.model_dim": dim, "model.num_layers": layers,
                 "model.num_heads": heads, "model.num_kv_heads": kv_dim // (dim // heads), "model.mlp_hidden": hidden,
                 "model.tie_embeddings": "lm_head.weight" not in state}
    return load_recipe(recipe, overrides=overrides)


def load_challenge_model(path: str | Path, recipe: str, device: str | torch.device = "cpu",
                         max_bytes: int = MAX_DECOMPRESSED_BYTES) -> tuple[GPT, Config]:
    """(pgolf model holding the artifact's weights, its config) for a challenge artifact."""
    path = Path(path)
    state = dequantize_challenge(read_challenge_object(path, max_bytes), path)
    cfg = challenge_config(state, recipe, path)
    model = build_model(cfg.model, cfg.data.bos_id)
    ours = model.state_dict()
    mapped = {NAME_MAP.get(name, name): t for name, t in state.items()}
    missing, unexpected = sorted(set(ours) - set(mapped)), sorted(set(mapped) - set(ours))
    if missing or unexpected:
        raise ChallengeFormatError(f"{path}: does not map onto the {recipe} model: missing {missing[:5]}, "
                                   f"unexpected {unexpected[:5]}")
    for name, t in mapped.items():
        if tuple(t.shape) != tuple(ours[name].shape):
            raise ChallengeFormatError(f"{path}: '{name}' has shape {tuple(t.shape)}; the {recipe} model's is "
                                       f"{tuple(ours[name].shape)}")
    model.load_state_dict({name: t.to(ours[name].dtype) for name, t in mapped.items()}, strict=True)
    model.set_looping(True)
    return model.to(device), cfg
