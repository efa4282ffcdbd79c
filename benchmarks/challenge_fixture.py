"""Make tests/fixtures/challenge_baseline_tiny.int8.ptz with the challenge's own code, and the score it gives.

Runs the baseline train_gpt.py of openai/parameter-golf (read from the path given; never part of pgolf) at tiny
size on this CPU: its GPT, built and cast as its main() does (bf16 model, CastedLinear weights and control
tensors back to fp32, so tok_emb is bf16), a few steps of its Muon + Adam on its DistributedTokenLoader over
the FineWeb sp1024 sample, then its quantize_state_dict_int8 -> torch.save -> zlib.compress(level 9), i.e. the
final_model.int8.ptz its main() writes. It then scores that file the way its main() does on the round trip
(zlib.decompress, torch.load, dequantize_state_dict_int8, load_state_dict, eval_val) on the first VAL_TOKENS
tokens of the sample's validation shard (cut by its load_validation_tokens) and records val_loss / val_bpb.
tests/test_challenge_format.py checks that `pgolf eval FILE --recipe baseline` gives the same numbers.

Shims (each listed in the JSON): the size cut-off for fp16 passthrough (INT8_KEEP_FLOAT_MAX_NUMEL, 65,536) is
lowered to 256 so that a tiny model still has int8 per-row matrices beside fp16 passthrough ones; the
round-trip model is held in fp32 for eval_val (the challenge scores under CUDA bf16 autocast; on a CPU its
autocast is off, and the bf16 embedding would run the whole forward in bf16: pgolf's CPU eval is fp32); no
torch.compile.

    git -C parameter-golf show main:train_gpt.py > /tmp/train_gpt.py
    python benchmarks/challenge_fixture.py --train-gpt /tmp/train_gpt.py
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import os
import sys
import tempfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import sentencepiece as spm
import torch

from pgolf.training.runs import write_json

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PGOLF_SHARED_DATA", REPO.parent / "shared" / "data"))
FIXTURE = REPO / "tests" / "fixtures" / "challenge_baseline_tiny.int8.ptz"
DIMS = {"vocab_size": 1024, "num_layers": 2, "model_dim": 16, "num_heads": 2, "num_kv_heads": 1, "mlp_mult": 2}
SEQ_LEN, TOKENS_PER_STEP, STEPS, SEED = 128, 1024, 30, 1337
VAL_TOKENS = 16_000  # 15,999 targets: the challenge's cut keeps 124 sequences of 128 (15,872 targets)
KEEP_FLOAT_MAX_NUMEL = 256


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("challenge_train_gpt", path)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    return ref


def build(ref) -> torch.nn.Module:
    """Its GPT as its main() builds it: bf16, then CastedLinear and control tensors back to fp32."""
    model = ref.GPT(**DIMS, tie_embeddings=True, tied_embed_init_std=0.005, logit_softcap=30.0, rope_base=10000.0,
                    qk_gain_init=1.5).bfloat16()
    for module in model.modules():
        if isinstance(module, ref.CastedLinear):
            module.float()
    ref.restore_low_dim_params_to_fp32(model)
    return model


def train(ref, model: torch.nn.Module, data: Path) -> list[float]:
    """Its optimizer split (Adam tok_emb 0.05, Muon matrices 0.04, Adam scalars 0.04, betas 0.9/0.95)."""
    named = list(model.blocks.named_parameters())
    control = lambda n, p: p.ndim < 2 or any(c in n for c in ref.CONTROL_TENSOR_NAME_PATTERNS)  # noqa: E731
    opts = [torch.optim.Adam([model.tok_emb.weight], lr=0.05, betas=(0.9, 0.95), eps=1e-8),
            ref.Muon([p for n, p in named if p.ndim == 2 and not control(n, p)], lr=0.04, momentum=0.95,
                     backend_steps=5),
            torch.optim.Adam([p for n, p in named if control(n, p)] + [model.skip_weights], lr=0.04,
                             betas=(0.9, 0.95), eps=1e-8)]
    loader = ref.DistributedTokenLoader(str(data / "fineweb_train_*.bin"), 0, 1, torch.device("cpu"))
    losses = []
    for _ in range(STEPS):
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        x, y = loader.next_batch(TOKENS_PER_STEP, SEQ_LEN, 1)
        loss = model(x, y)
        loss.backward()
        for opt in opts:
            opt.step()
        losses.append(loss.item())
    return losses


def write_val_shard(tokens: np.ndarray, folder: Path) -> Path:
    """A shard in the challenge's format (256 int32 header: magic, version, count; uint16 tokens)."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, tokens.size)
    path = folder / "fineweb_val_000000.bin"
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())
    return path


def export(ref, model: torch.nn.Module, path: Path) -> tuple[dict, dict]:
    """Its export as its main() runs it: quantize_state_dict_int8, torch.save, zlib level 9, to `path`."""
    obj, stats = ref.quantize_state_dict_int8(model.state_dict())
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(zlib.compress(buf.getvalue(), level=9))
    return obj, stats


def roundtrip_eval(ref, path: Path, eval_model: torch.nn.Module, data: Path, tokenizer: Path, n_tokens: int,
                   seq_len: int) -> tuple[float, float, int]:
    """Its round trip (decompress, torch.load, dequantize_state_dict_int8, load_state_dict, eval_val) on the first
    n_tokens of the folder's validation shard, cut by its load_validation_tokens: (val_loss, val_bpb, targets).
    The model is held in fp32 (shim: CUDA autocast is off on a CPU)."""
    loaded = torch.load(io.BytesIO(zlib.decompress(path.read_bytes())), map_location="cpu")
    eval_model.load_state_dict(ref.dequantize_state_dict_int8(loaded), strict=True)
    eval_model.float()
    val = np.fromfile(data / "fineweb_val_000000.bin", dtype="<u2", offset=256 * 4, count=n_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        val_tokens = ref.load_validation_tokens(str(write_val_shard(val, Path(tmp))), seq_len)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    luts = ref.build_sentencepiece_luts(sp, eval_model.tok_emb.num_embeddings, torch.device("cpu"))
    hp = SimpleNamespace(val_batch_size=32 * seq_len, train_seq_len=seq_len)
    val_loss, val_bpb = ref.eval_val(hp, eval_model, 0, 1, torch.device("cpu"), 1, val_tokens, *luts)
    return val_loss, val_bpb, int(val_tokens.numel() - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-gpt", required=True, help="path to the challenge's baseline train_gpt.py")
    parser.add_argument("--out", default=str(FIXTURE))
    args = parser.parse_args()
    data = SHARED / "datasets" / "fineweb10B_sp1024_sample"
    tokenizer = SHARED / "tokenizers" / "fineweb_1024_bpe.model"
    if not data.is_dir() or not Path(args.train_gpt).is_file():
        print(f"needs the FineWeb sample at {data} and the challenge's train_gpt.py at {args.train_gpt}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    ref = load_module(args.train_gpt)
    ref.INT8_KEEP_FLOAT_MAX_NUMEL = KEEP_FLOAT_MAX_NUMEL
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    model = build(ref)
    losses = train(ref, model, data)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    obj, stats = export(ref, model, out)
    eval_model = build(ref)
    val_loss, val_bpb, scored = roundtrip_eval(ref, out, eval_model, data, tokenizer, VAL_TOKENS, SEQ_LEN)
    blob = out.read_bytes()

    source = Path(args.train_gpt).read_bytes()
    report = {
        "benchmark": "challenge_fixture",
        "file": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out),
        "file_bytes": len(blob), "file_sha256": hashlib.sha256(blob).hexdigest(),
        "train_gpt_sha256": hashlib.sha256(source).hexdigest(),
        "format": obj["__quant_format__"], "quantized": sorted(obj["quantized"]),
        "passthrough": sorted(obj["passthrough"]), "dtypes": obj["dtypes"],
        "dims": DIMS, "seq_len": SEQ_LEN, "train_steps": STEPS, "tokens_per_step": TOKENS_PER_STEP, "seed": SEED,
        "train_loss_first_last": [losses[0], losses[-1]], "param_count": stats["param_count"],
        "val_tokens": VAL_TOKENS, "val_targets_scored": scored,
        "val_source": "the first val_tokens tokens of datasets/fineweb10B_sp1024_sample/fineweb_val_000000.bin",
        "val_loss": val_loss, "val_bpb": val_bpb,
        "shims": [f"INT8_KEEP_FLOAT_MAX_NUMEL {KEEP_FLOAT_MAX_NUMEL} (challenge: 65,536)",
                  "round-trip model cast to fp32 before eval_val (challenge: bf16 embedding under CUDA bf16 autocast)",
                  "no torch.compile, no DDP, CPU"],
        "torch": torch.__version__,
        "command": " ".join(["python", "benchmarks/challenge_fixture.py", *sys.argv[1:]]),
    }
    write_json(out.with_suffix("").with_suffix(".json"), report)
    print({k: report[k] for k in ("file_bytes", "val_loss", "val_bpb", "val_targets_scored")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
