"""`pgolf recipes`: what each shipped recipe turns on, its size at full scale, and its artifact estimate."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..artifact.budget import LIMIT_BYTES, estimate_breakdown
from ..config import SECTIONS, Config, load_recipe, recipe_names
from ..model.gpt import count_parameters

# Keys that describe techniques (not sizes or rates); shown when a recipe moves them off the default.
TECHNIQUE_KEYS = {
    "data": ("text_transform", "byte_source", "loader"),
    "model": ("mlp", "rope_dims", "rope_ntk_train_len", "init", "layer_schedule", "recurrence_start_frac",
              "bridge_layers", "bridge_modulation", "skip_gates", "ln_scale", "layer_scales", "parallel_residual",
              "lora_rank", "attn_gate", "sparse_attn_gate", "value_residual", "xsa_last_n", "doc_attention",
              "bigram_buckets", "smear", "value_embed_layers", "tie_embeddings", "unet_skips", "resid_mix"),
    "optim": ("matrix_optimizer", "muon_momentum_style", "muon_ns_coeffs", "muon_row_normalize",
              "muon_normuon_beta2", "muon_weight_decay", "muon_wd_taper_start", "embed_weight_decay",
              "scalar_weight_decay", "proj_muon", "grad_clip_norm"),
    "train": ("averaging", "warmdown", "fused_mlp", "fused_ce"),
    "quant": ("method", "matrix_bits", "attn_bits", "mlp_bits", "embed_bits", "hessian_clip_lambda", "gate_bits",
              "lqer_rank", "gptq_calib_source", "qat", "bit_pack", "byte_shuffle", "compressor", "fit"),
    "eval": ("sliding_stride", "doc_boundaries", "ttt", "ttt_lora_warm_start_a", "ttt_doc_order",
             "ttt_global_phase_docs"),
}


def switches(cfg: Config) -> list[str]:
    default = Config()
    out = []
    for section, keys in TECHNIQUE_KEYS.items():
        for key in keys:
            value = getattr(getattr(cfg, section), key)
            if value != getattr(getattr(default, section), key):
                text = value if not isinstance(value, list) or len(value) <= 6 else f"{value[:6]}..({len(value)})"
                out.append(f"{section}.{key}={text}")
    return out


def recipe_table() -> list[dict[str, Any]]:
    rows = []
    for name in recipe_names():
        # the recipe's own config: its code bytes are what its runs record
        full = load_recipe(name, "full", {"quant.allow_over_budget": True})
        tiny = load_recipe(name, "tiny", {"quant.allow_over_budget": True})
        estimate = estimate_breakdown(full)  # code and header of this recipe's own config, exactly
        rows.append({
            "name": name, "description": full.description, "switches": switches(full),
            "params_full": count_parameters(full.model), "params_tiny": count_parameters(tiny.model),
            "artifact_estimate": estimate["artifact_bytes_estimate"], "code_bytes": estimate["code_bytes"],
            "header_bytes": estimate["header_bytes"] + estimate["framing_bytes"],
            "payload_estimate": estimate["payload_bytes_estimate"],
            "fits": estimate["artifact_bytes_estimate"] <= LIMIT_BYTES,
        })
    return rows


assert set(TECHNIQUE_KEYS) <= set(SECTIONS) and all(
    k in {f.name for f in dataclasses.fields(SECTIONS[s])} for s, ks in TECHNIQUE_KEYS.items() for k in ks)
