"""Shared parts of the records' lockstep runs (pr103.py, pr206.py, pr595.py): pgolf's side, the challenge-side
training loop driven step by step, the validation tokens both sides score, and the per-seed figures.

Each record file supplies what is its own: the model built from its train_gpt.py, the name map from pgolf's
state dict onto its names, its optimizer split and its schedule; this module runs both sides on the same batches
(checked equal) and reports the largest |train-loss difference| per step and each side's artifact val_bpb.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

import pgolf
from pgolf.data.dataset import load_validation, resolve_dataset, validation_bytes
from pgolf.data.loader import DistributedTokenLoader as PgolfLoader
from pgolf.eval.bpb import evaluate
from pgolf.training.runtime import seed_everything

from challenge_fixture import write_val_shard
from lockstep_cpu import DATA, TINY, TOKENIZER, VAL_TOKENS, run_pgolf, tiny_config  # noqa: F401 (run_pgolf: re-exported)


def pgolf_config(recipe: str, seed: int, steps: int, ns_dtype: str, extra: dict | None = None) -> pgolf.Config:
    """The recipe at --scale tiny with lockstep's TINY dimensions (plus the record's `extra` overrides)."""
    return tiny_config(recipe, seed, steps, ns_dtype, {**TINY, **(extra or {})})


def initial_state(cfg: pgolf.Config) -> dict[str, Tensor]:
    """The weights pgolf.train starts from (same seed, same construction order)."""
    seed_everything(cfg.seed)
    return pgolf.build_model(cfg.model, cfg.data.bos_id).state_dict()


@dataclass
class ChallengeSteps:
    """The record's training step, one rank and one micro-step, as its main() runs it:
    zero_grad -> next_batch -> loss.backward -> clip(all params) -> every optimizer's step; the lr multiplier and
    Muon momentum set before each step by the record's own functions, SWA snapshots after the step."""
    model: nn.Module
    optimizers: list[torch.optim.Optimizer]
    lr_mul: Callable[[int], float]             # step index -> multiplier of each group's base_lr
    set_momentum: Callable[[int], None]        # step index -> sets Muon momentum (the record's warm-up)
    grad_clip_norm: float = 0.0
    swa_due: Callable[[int, float], bool] | None = None  # (completed steps, multiplier) -> take a snapshot
    swa_average: Callable[[list[dict]], dict] | None = None
    before_step: Callable[[int], None] | None = None      # the record's per-step special work (QAT switch, ...)
    clip: Callable[[], None] | None = None  # diagnostics only: another clip in place of clip_grad_norm_(all params)
    snapshots: list[dict] = field(default_factory=list)

    def run(self, loader, steps: int, batch_tokens: int, seq_len: int, vocab_size: int) -> tuple[list[float], bool]:
        ours = PgolfLoader(sorted(DATA.glob("fineweb_train_*.bin")), 0, 1, vocab_size)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])
        same_batches, losses = True, []
        for step in range(steps):
            mult = self.lr_mul(step)
            for opt in self.optimizers:
                for group in opt.param_groups:
                    group["lr"] = group["base_lr"] * mult
            self.set_momentum(step)
            if self.before_step is not None:
                self.before_step(step)
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            x, y = loader.next_batch(batch_tokens, seq_len, 1)
            px, py = ours.next_batch(batch_tokens, seq_len, 1)
            same_batches &= torch.equal(x, px) and torch.equal(y, py)
            loss = self.model(x, y)
            loss.backward()
            if self.clip is not None:
                self.clip()
            elif self.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
            for opt in self.optimizers:
                opt.step()
            losses.append(loss.item())
            if self.swa_due is not None and self.swa_due(step + 1, mult):
                self.snapshots.append({k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
        if self.snapshots and self.swa_average is not None:
            self.model.load_state_dict(self.swa_average(self.snapshots), strict=True)
        return losses, same_batches


def pgolf_swa_rule(cfg: pgolf.Config) -> Callable[[int, float], bool]:
    """pgolf's SWA snapshot steps (optim/averaging.py): after completed step s when s > warmup_steps,
    multiplier < swa_start_lr and s % swa_every == 0."""
    t = cfg.train

    def due(done: int, mult: float) -> bool:
        return done > t.warmup_steps and mult < t.swa_start_lr and done % max(1, t.swa_every) == 0
    return due


def swa_mean(model: nn.Module) -> Callable[[list[dict]], dict]:
    """The records' SWA average (#206, #595): the snapshots summed in each tensor's dtype (fp32 here) and divided
    by their count; with fewer than 2 snapshots the model's own weights."""
    def average(snaps: list[dict]) -> dict:
        if len(snaps) < 2:
            return {k: v for k, v in model.state_dict().items()}
        total = {k: v.clone() for k, v in snaps[0].items()}
        for s in snaps[1:]:
            for k in total:
                total[k] += s[k]
        return {k: (t / len(snaps)).to(dtype=model.state_dict()[k].dtype) for k, t in total.items()}
    return average


def step_warmdown(cfg: pgolf.Config, warmup_steps: int) -> Callable[[int], float]:
    """The record's warm-up (step / warmup for step < warmup) and then lockstep's step warmdown
    ((S - s) / W over the last W steps) in place of its wall-clock one."""
    t = cfg.train

    def mult(step: int) -> float:
        if step < warmup_steps:
            return step / max(warmup_steps, 1)
        if t.steps - t.warmdown_steps <= step < t.steps:
            return max((t.steps - step) / t.warmdown_steps, 0.0)
        return 1.0
    return mult


def challenge_val_file(ref, tmp: Path, seq_len: int) -> Tensor:
    """The first VAL_TOKENS validation tokens written as a shard and read back by the record's own
    load_validation_tokens (its cut to whole sequences)."""
    val = np.fromfile(DATA / "fineweb_val_000000.bin", dtype="<u2", offset=256 * 4, count=VAL_TOKENS)
    folder = tmp / "val"
    folder.mkdir(exist_ok=True)
    return ref.load_validation_tokens(str(write_val_shard(val, folder)), seq_len)


def challenge_luts(ref, vocab_size: int):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    return ref.build_sentencepiece_luts(sp, vocab_size, torch.device("cpu"))


def pgolf_score(cfg: pgolf.Config, state: dict[str, Tensor]) -> dict:
    """Weights under pgolf's names (e.g. the record's dequantized artifact, mapped) loaded into pgolf's model of the
    config and scored by pgolf's evaluator with the recipe's eval settings (what result.json's val_bpb uses)."""
    model = pgolf.build_model(cfg.model, cfg.data.bos_id)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.eval()
    dataset = resolve_dataset(cfg, False, check_ids=False)
    tokens = load_validation(dataset, cfg.model.vocab_size, cfg.data.val_tokens_limit)
    ev = evaluate(model, tokens, None, cfg.eval, token_bytes=validation_bytes(dataset, cfg.data, tokens,
                                                                              cfg.model.vocab_size))
    return {"val_bpb": ev.val_bpb, "val_loss": ev.val_loss, "val_targets": ev.targets}


def loss_figures(ours: list[float], theirs: list[float]) -> dict:
    diffs = [abs(a - b) for a, b in zip(ours, theirs)]
    return {"steps": len(diffs), "max_abs_train_loss_diff": max(diffs), "step_of_max": int(np.argmax(diffs)) + 1,
            "max_rel_train_loss_diff": max(d / abs(b) for d, b in zip(diffs, theirs)),
            "max_abs_train_loss_diff_steps_1_10": max(diffs[:10]),
            "median_abs_train_loss_diff": float(np.median(diffs)),
            "abs_train_loss_diff_per_step": [round(d, 7) for d in diffs],
            "train_loss_pgolf": [round(v, 6) for v in ours], "train_loss_challenge": [round(v, 6) for v in theirs]}


def seed_row(name: str, mode: str, seed: int, same_batches: bool, ours: list[float], theirs: list[float],
             result: dict, scored: dict, n_swa: int) -> dict:
    """One seed's figures (pgolf's result.json, the record's `scored` export figures), printed as they come."""
    row = {"seed": seed, "same_batches": same_batches, **loss_figures(ours, theirs),
           "val_bpb_pgolf_artifact": result["val_bpb"], **scored,
           "val_targets_pgolf": result["val_targets"], "swa_snapshots_pgolf": result["swa_snapshots"],
           "swa_snapshots_challenge": n_swa, "artifact_bytes_pgolf": result["artifact_bytes"],
           "model_bytes_pgolf": result["model_bytes"]}
    print({"seed_recipe": name, "mode": mode, **{k: v for k, v in row.items() if not isinstance(v, list)}}, flush=True)
    return row


def add_mode(out: dict, mode: str, runs: list[dict]) -> None:
    """out[mode] = the mode's rows and largest difference; the as_written mode's are also the record's headline
    (out["runs"], out["max_abs_train_loss_diff"], kept after the modes)."""
    out[mode] = {"runs": runs, "max_abs_train_loss_diff": max(r["max_abs_train_loss_diff"] for r in runs)}
    head = out.get("as_written", out[mode])
    out.pop("runs", None), out.pop("max_abs_train_loss_diff", None)
    out["runs"], out["max_abs_train_loss_diff"] = head["runs"], head["max_abs_train_loss_diff"]


def temp_dir():
    return tempfile.TemporaryDirectory()
