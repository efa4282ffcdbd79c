"""The `pgolf` command line: thin wrappers that parse arguments, load a config and call the library.

Everything is imported at the top: `import pgolf` already loads torch and the trainer (the package's API), so
importing the commands' modules lazily would save `pgolf --help` about 0.03 s of its ~1.6 s (measured).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..artifact.budget import check_budget
from ..artifact.linemap import LineMapError, check_script, load_linemap, map_traceback
from ..config import ConfigError, config_to_toml, describe_keys, load_config, load_recipe, parse_set_args
from ..data.dataset import DataMismatchError
from ..data.docs import DocsError, prepare_file
from ..data.download import DownloadError, download
from ..data.prepare import TRANSFORMS, InputError
from ..data.shards import ShardError
from ..data.stats import folder_stats, shard_stats
from ..data.tokenizer import TokenizerError
from ..quant.breakdown import format_breakdown
from ..quant.container import ArtifactError
from ..quant.gptq import GPTQError
from ..training.checkpoint import CheckpointError
from ..training.loop import TrainingDiverged, TrainingInterrupted, train
from ..training.plan import format_plan, plan
from ..training.runtime import collective_failure
from ..sweep import SlotError, SpecError, StudyMismatch, load_spec, run_sweep, write_report
from .challenge_format import ChallengeFormatError
from .evaluate_artifact import describe_targets, evaluate_artifact
from .recipes_info import recipe_table
from .repack import repack_run
from .report import (ComparisonError, RunFolderError, compare_runs, load_runs, markdown_table, plot_comparison,
                     plot_runs, report_rows, split_sides)
from .submit import SubmissionError, make_submission

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_OVER_LIMIT = 4


def _add_config_args(p: argparse.ArgumentParser, default_recipe: str = "tiny") -> None:
    p.add_argument("--recipe", default=default_recipe, help=f"shipped recipe name or a .toml path (default: {default_recipe})")
    p.add_argument("--scale", choices=("full", "tiny"), default="full",
                   help="full = published sizes; tiny = the same switches at CPU size")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set model.num_layers=11 (repeatable)")
    p.add_argument("--seed", type=int, help="random seed (same as --set seed=N)")
    p.add_argument("--data", help="folder of fineweb_train_*.bin / fineweb_val_*.bin shards (default: the embedded corpus)")
    p.add_argument("--tokenizer", help="tokenizer matching the data: a SentencePiece .model, a pure-byte .json, or byte260")


def config_from_args(args: argparse.Namespace):
    overrides: dict[str, Any] = parse_set_args(args.overrides)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.data:
        overrides["data.path"] = args.data
    if args.tokenizer:
        overrides["data.tokenizer"] = args.tokenizer
    cfg = load_recipe(args.recipe, scale=args.scale, overrides=overrides)
    check_budget(cfg)  # a config estimated far over the byte limit is refused before anything starts
    return cfg


# ----------------------------------------------------------------------------- commands

def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").is_file():
            raise ConfigError(f"{run_dir}: no config.toml; is this a pgolf run folder?")
        cfg = load_config(run_dir / "config.toml")
        out = run_dir
    else:
        cfg = config_from_args(args)
        out = args.out
    try:
        result = train(cfg, out, resume=bool(args.resume), progress=not args.quiet, runs_root=args.runs_root,
                       device=args.device)
    except TrainingInterrupted as exc:
        print(f"pgolf: {exc}", file=sys.stderr)
        return 128 + int(exc.signum)
    except TrainingDiverged as exc:
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except RuntimeError as exc:
        message = collective_failure(exc)
        if message is None:
            raise
        print(f"pgolf: error: {message}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(result, indent=2))
    return 0 if result["under_limit"] else EXIT_OVER_LIMIT


def cmd_recipes(args: argparse.Namespace) -> int:
    rows = recipe_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']:<10} {row['description']}")
        print(f"{'':<10} params {row['params_full']:,} (tiny {row['params_tiny']:,}); "
              f"est. artifact {row['artifact_estimate']:,} bytes = code {row['code_bytes']:,} + header "
              f"{row['header_bytes']:,} + weights ~{row['payload_estimate']:,} ({'fits' if row['fits'] else 'OVER'} 16,000,000)")
        print(f"{'':<10} on: {', '.join(row['switches']) or 'baseline only'}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    overrides = parse_set_args(args.overrides)
    overrides.setdefault("quant.allow_over_budget", True)  # plan reports an over-budget config; it does not refuse it
    cfg = load_recipe(args.recipe, scale=args.scale, overrides=overrides)
    result = plan(cfg, gpus=args.gpus, gpu=args.gpu, mfu=args.mfu, eval_mfu=args.eval_mfu)
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.keys:
        for key, typ, default, help_text in describe_keys():
            print(f"{key:<34} {typ:<6} {default!r:<22} {help_text}")
        return 0
    print(config_to_toml(config_from_args(args)), end="")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "prepare":
        meta = prepare_file(args.input, args.out, text_key=args.text_key, tokenizer=args.tokenizer,
                            vocab_size=args.vocab_size, val_docs=args.val_docs, check_docs=not args.no_docs_check,
                            shard_tokens=args.shard_tokens, progress=not args.quiet,
                            tokenizer_train_docs=args.tokenizer_train_docs, transform=args.transform)
        print(f"wrote {args.out}: {meta['val']['docs']:,} val docs ({meta['val']['tokens']:,} tokens), "
              f"{meta['train']['docs']:,} train docs ({meta['train']['tokens']:,} tokens), vocab {meta['vocab_size']}"
              + (f", text transform {args.transform} (val byte sidecar: {meta['val']['sidecar_bytes']:,} bytes)"
                 if args.transform != "none" else ""))
        docs = meta["docs"]
        if docs["checked"]:
            print(f"{args.input} matches {docs['sidecar']} ({', '.join(docs['checked'])})")
        return 0
    if args.data_command == "stats":
        if Path(args.path).is_dir():
            stats = folder_stats(args.path, args.tokenizer, check_decode=args.check_decode, manifest=args.manifest,
                                 transform=args.transform)
        else:
            stats = shard_stats(args.path, args.tokenizer, check_decode=args.check_decode, transform=args.transform,
                                sidecar=args.sidecar)
        if args.json:
            print(json.dumps(stats, indent=2))
            return 0
        for key, value in stats.items():
            if isinstance(value, dict):
                print(f"{key:<20} " + ", ".join(f"{k} {v:,}" if isinstance(v, int) and not isinstance(v, bool)
                                                  else f"{k} {v}" for k, v in value.items()))
            else:
                print(f"{key:<20} {value:,}" if isinstance(value, int) else f"{key:<20} {value}")
        return 0
    if args.data_command == "download":
        shards = args.train_shards_positional if args.train_shards_positional is not None else args.train_shards
        info = download(args.variant, shards, args.out, repo_id=args.repo_id, remote_root=args.remote_root,
                        revision=args.revision, with_docs=args.with_docs, skip_manifest=args.skip_manifest,
                        progress=not args.quiet)
        source = info["repo"] + (f"@{info['revision'][:12]}" if info["revision"] else "")
        if info["fetched"]:
            print(f"{info['fetched']} file(s) fetched from {source} ({info['bytes_fetched']:,} bytes; {info['linked']} "
                  f"hard-linked from the Hugging Face cache, {info['copied']} copied), {info['present']} already there")
        else:
            print(f"all {info['present']} files of {source} already there: nothing fetched")
        if info["offline"]:
            print(f"offline ({info['offline']}): files already there were not checked against the Hub", file=sys.stderr)
        if info["docs"]:
            print(f"documents in {info['docs']} (checked against its docs_sha256 when fetched)")
        print(f"data in {info['data']}; tokenizer {info['tokenizer']}")
        vocab = " --set model.vocab_size=260" if args.variant == "byte260" else ""
        print(f"train with: pgolf train --recipe baseline --data {info['data']} --tokenizer {info['tokenizer']}{vocab}")
        return 0
    raise AssertionError(args.data_command)


def cmd_pack(args: argparse.Namespace) -> int:
    try:
        result = repack_run(args.run_dir, args.out, parse_set_args(args.overrides), data=args.data, device=args.device)
    except GPTQError as exc:
        print(f"pgolf: error: {args.run_dir}: GPTQ: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_breakdown(result["breakdown"]))
        if result["fit"] is not None:
            print(f"quant.fit: {fit_summary(result['fit'])}")
        print(f"packed in {result['pack_seconds']:.1f} s; score it with: pgolf eval {args.out}")
    if not result["under_limit"]:
        failed = result["fit"] is not None and not result["fit"]["ok"]
        print(f"pgolf: {'error' if failed else 'WARNING'}: {args.out} is OVER the {result['limit_bytes']:,}-byte limit by "
              f"{result['artifact_bytes'] - result['limit_bytes']:,} bytes ({result['artifact_bytes']:,} = "
              f"code {result['code_bytes']:,} + model {result['model_bytes']:,}); it cannot be submitted as it is."
              + (f" quant.fit failed: {result['fit']['message']}." if failed else
                 " --set quant.fit=true prunes it under the limit."), file=sys.stderr)
        return EXIT_OVER_LIMIT
    return 0


def fit_summary(fit: dict[str, Any]) -> str:
    """One line on what quant.fit did and (when measured) what it cost."""
    text = fit["message"]
    if "val_bpb_cost" in fit:
        text += f"; val_bpb {fit['val_bpb_unfitted']:.5f} -> {fit['val_bpb_unfitted'] + fit['val_bpb_cost']:.5f} " \
                f"({fit['val_bpb_cost']:+.5f}) after the round trip"
    return text + f" [{fit['compressions']} compressions, {fit['seconds']:.1f} s]"


def cmd_eval(args: argparse.Namespace) -> int:
    overrides = parse_set_args(args.overrides)
    if args.sliding_stride is not None:  # convenience flags for eval.* overrides
        overrides["eval.sliding_stride"] = args.sliding_stride
    if args.ttt is not None:
        overrides["eval.ttt"] = args.ttt
    if args.tail is not None:
        overrides["eval.tail"] = args.tail
    result = evaluate_artifact(args.artifact, args.data, args.tokenizer, overrides, device=args.device,
                               val_tokens=args.val_tokens, recipe=args.recipe)
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return 0  # under torchrun every rank has the same result: rank 0 prints it
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"val_bpb {result['val_bpb']:.6f}  val_loss {result['val_loss']:.6f}  ({result['eval_mode']}, "
              f"{result['val_targets']:,} targets, {result['val_bytes']:,} bytes, {result['eval_seconds']:.1f} s"
              f"{'' if result['legal'] else ', NOT LEGAL under the challenge rules'})")
        print(f"scored {describe_targets(result)} in {result['data']}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        a_tokens, b_tokens = split_sides(args.runs)
        options = argparse.ArgumentParser(prog="pgolf compare", add_help=False)  # options written after the runs
        options.add_argument("--force", action="store_true")
        options.add_argument("--json", action="store_true")
        options.add_argument("--plot")
        options.add_argument("--margin", type=float)
        a_paths = options.parse_known_args(a_tokens, namespace=args)[1]
        b_paths = options.parse_known_args(b_tokens, namespace=args)[1]
        stray = [t for t in a_paths + b_paths if t.startswith("--")]
        if stray:
            raise ComparisonError(f"unknown option(s) {', '.join(stray)}")
        comparison = compare_runs(a_paths, b_paths, force=args.force,
                                  margin=0.005 if args.margin is None else args.margin)
    except (ComparisonError, RunFolderError) as exc:
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    plot = plot_comparison(comparison, args.plot or "compare.png")
    if args.json:
        print(json.dumps({**comparison.to_dict(), "plot": str(plot)}, indent=2))
        for warning in comparison.warnings:
            print(f"pgolf: warning: {warning}", file=sys.stderr)
    else:
        print(comparison.format())  # warnings included
        print(f"plot: {plot}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    try:
        runs = load_runs(args.runs)
    except RunFolderError as exc:
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rows = report_rows(runs)
    print(json.dumps(rows, indent=2) if args.json else markdown_table(rows))
    if args.plot:
        print(f"plot: {plot_runs(runs, args.plot)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    fixed = parse_set_args(args.overrides)
    if args.data:
        fixed["data.path"] = args.data
    if args.tokenizer:
        fixed["data.tokenizer"] = args.tokenizer
    try:
        spec = load_spec(args.spec, fixed)
        if args.report:
            summary = write_report(spec, args.out, storage=args.storage)
        else:
            command = tuple(shlex.split(args.train_command)) if args.train_command else None
            summary = run_sweep(spec, args.out, storage=args.storage, worker=args.worker, jobs=args.jobs,
                                threads=args.threads, gpus_per_trial=args.gpus_per_trial,
                                say=(lambda _: None) if args.quiet else (lambda line: print(line, flush=True)),
                                **({"train_command": command} if command else {}))
    except SpecError as exc:
        for problem in exc.problems:
            print(f"pgolf: error: {exc.path}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except (StudyMismatch, SlotError) as exc:
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    if summary is not None:
        best = summary["best"]
        print(f"wrote {Path(summary['spec']['path']).name} results: sweep.md, sweep.json, sweep.png"
              + (f", best.toml (trial {best['trial']}, val_bpb {best['val_bpb']:.4f})" if best else "")
              + (", compare.txt" if summary["compare"] and "error" not in summary["compare"] else ""))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        made = make_submission(args.runs, args.out, name=args.name, author=args.author, github_id=args.github_id,
                               blurb=args.blurb, force=args.force)
    except (SubmissionError, RunFolderError) as exc:
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    record = made["record"]
    print(f"wrote {made['out']}: {', '.join(made['files'])}")
    print(f"val_bpb {record['val_bpb']:.5f} over seeds {record['seeds']}; {record['bytes_total']:,} bytes = "
          f"train_gpt.py {record['bytes_code']:,} + model {record['bytes_model']:,}; track {record['track']}")
    for warning in made["warnings"]:
        print(f"pgolf: warning: {warning}", file=sys.stderr)
    return 0


def cmd_traceback(args: argparse.Namespace) -> int:
    try:
        linemap = load_linemap(args.linemap)
        if args.script:
            check_script(linemap, args.script)
        text = Path(args.traceback).read_text(encoding="utf-8") if args.traceback else sys.stdin.read()
    except (LineMapError, OSError) as exc:
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(map_traceback(text, linemap))
    return 0


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgolf", description="Parameter golf: train, pack and score tiny language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe (default: the tiny recipe on the embedded corpus)")
    _add_config_args(p)
    p.add_argument("--out", help="run folder (default: runs/<recipe>-<time>-s<seed>)")
    p.add_argument("--runs-root", default="runs", help="where new run folders go (default: runs)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print result.json at the end")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("recipes", help="list the recipes and what each turns on")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("plan", help="a dry run on any CPU: parameters, FLOPs, memory per GPU, ms/step, steps in the "
                                    "cap, artifact and evaluation-time estimates, with warnings")
    p.add_argument("--recipe", default="baseline", help="shipped recipe name or a .toml path (default: baseline)")
    p.add_argument("--scale", choices=("full", "tiny"), default="full")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--gpus", type=int, default=8, help="number of GPUs (default 8)")
    p.add_argument("--gpu", default="h100", choices=("h100", "h200", "a100"), help="GPU model (default h100)")
    p.add_argument("--mfu", type=float, default=0.30, help="assumed training MFU of the bf16 peak (default 0.30)")
    p.add_argument("--eval-mfu", type=float, default=0.20, help="assumed evaluation MFU (default 0.20)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("config", help="print a resolved config as TOML (or --keys: every key with its help)")
    _add_config_args(p)
    p.add_argument("--keys", action="store_true", help="list every config key, type, default and meaning")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("data", help="prepare, inspect or download token shards")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("prepare", help="text/JSONL documents -> tokenizer + train/val shards (the challenge's export)")
    d.add_argument("--input", required=True, help=".jsonl (one {\"text\": ...} per line, e.g. docs_selected.jsonl) "
                                                  "or .txt (blank-line separated)")
    group = d.add_mutually_exclusive_group(required=True)
    group.add_argument("--tokenizer", help="use this tokenizer: a SentencePiece .model, a pure-byte .json, or byte260")
    group.add_argument("--vocab-size", type=int, help="train a SentencePiece BPE of this size (challenge settings)")
    d.add_argument("--val-docs", type=int, default=None,
                   help="the first N documents go to validation (default: the docs sidecar's docs_val, else 50,000)")
    d.add_argument("--tokenizer-train-docs", type=int, default=None, metavar="N",
                   help="train the tokenizer on the first N documents, validation included, as the challenge's "
                        "exporter does (default: on all training documents, no validation text)")
    d.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (default 100,000,000)")
    d.add_argument("--no-docs-check", action="store_true",
                   help="do not check the input against its <stem>.source_manifest.json sidecar")
    d.add_argument("--text-key", default="text", help="JSONL field holding the text")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--transform", default="none", choices=TRANSFORMS,
                   help="rewrite the text before the tokenizer: caseops = #1729's case operators as user-defined "
                        "pieces, plus the validation byte sidecar fineweb_val_bytes_*.bin (default none)")
    d.add_argument("--quiet", action="store_true")
    d = dsub.add_parser("stats", help="documents, tokens, targets and exact bytes of a shard or a dataset folder")
    d.add_argument("path", metavar="SHARD_OR_FOLDER",
                   help="one shard, or a folder of fineweb_{val,train}_*.bin (checked against its manifest.json)")
    d.add_argument("--tokenizer", required=True, help="SentencePiece .model, pure-byte .json, or byte260")
    d.add_argument("--manifest", help="manifest.json to check a folder against (default: <folder>/../../manifest.json)")
    d.add_argument("--transform", choices=TRANSFORMS,
                   help="the shards' text transform (default: the text_transform of meta.json in the shard's folder, "
                        "else none); caseops counts bytes by the token-id rule and, where a byte sidecar "
                        "fineweb_val_bytes_*.bin is present, also by the sidecar")
    d.add_argument("--sidecar", help="byte sidecar of a single shard (default: fineweb_val_bytes_NNNNNN.bin beside it)")
    d.add_argument("--check-decode", action="store_true", help="also decode every document and count its UTF-8 bytes")
    d.add_argument("--json", action="store_true")
    d = dsub.add_parser("download", help="the challenge's FineWeb export from the Hugging Face Hub "
                                         "(the options of its data/cached_challenge_fineweb.py)")
    d.add_argument("train_shards_positional", nargs="?", type=int, default=None, help=argparse.SUPPRESS)
    d.add_argument("--variant", default="sp1024", help="sp1024, sp4096, sp8192 (any sp<N> the manifest lists) or byte260")
    d.add_argument("--train-shards", type=int, default=80, help="how many training shards (100M tokens each; default 80)")
    d.add_argument("--with-docs", action="store_true",
                   help="also docs_selected.jsonl and its source_manifest.json (docs_sha256 checked), for prepare")
    d.add_argument("--skip-manifest", action="store_true", help="use the manifest.json already under --out")
    d.add_argument("--out", default="data", help="root folder (gets manifest.json, datasets/, tokenizers/; default data)")
    d.add_argument("--repo-id", help="dataset repo (default: $MATCHED_FINEWEB_REPO_ID, else the variant's published repo)")
    d.add_argument("--remote-root", help="export root inside the repo (default: $MATCHED_FINEWEB_REMOTE_ROOT_PREFIX, "
                                         "else datasets)")
    d.add_argument("--revision", default="main", help="branch, tag or commit of the repo (default main)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("eval", help="score an artifact on a validation split")
    p.add_argument("artifact")
    p.add_argument("--data", help="data folder (default: the one the artifact was trained on)")
    p.add_argument("--tokenizer", help="tokenizer (default: the one the artifact was trained with)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="eval settings, e.g. --set eval.sliding_stride=64")
    p.add_argument("--sliding-stride", type=int, metavar="N", help="= --set eval.sliding_stride=N (0 = plain windows)")
    p.add_argument("--ttt", choices=("none", "chunk", "lora", "pre"),
                   help="= --set eval.ttt=...: score-first chunk TTT, per-document LoRA TTT, or #595's pre-scoring TTT (not legal)")
    p.add_argument("--val-tokens", type=int, metavar="N",
                   help="score only the first N validation tokens (N-1 targets); default: the whole split, whatever "
                        "prefix the run was trained with (= --set data.val_tokens_limit=N)")
    p.add_argument("--tail", choices=("score", "drop"),
                   help="= --set eval.tail=...: drop = score exactly the challenge's targets (its train_gpt.py drops "
                        "the tail past the last multiple of the sequence length)")
    p.add_argument("--recipe", choices=("baseline",),
                   help="ARTIFACT is the challenge's own format (the baseline train_gpt.py's final_model.int8.ptz): "
                        "score it on this recipe's model, widths read from its tensors (needs --data; default "
                        "--tail drop; set eval.context_len to the run's TRAIN_SEQ_LEN if not 1024)")
    p.add_argument("--device")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("pack", help="re-pack a run's full-precision weights with another quant policy; print where the bytes go")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder with config.toml and model.safetensors")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="quant settings, e.g. --set quant.matrix_bits=6 --set quant.method=gptq (repeatable)")
    p.add_argument("--out", required=True, metavar="FILE", help="artifact to write")
    p.add_argument("--data", help="training shards for GPTQ calibration (default: the run's data)")
    p.add_argument("--device", help="device for GPTQ calibration (default: cpu)")
    p.add_argument("--json", action="store_true", help="print the sizes and breakdown as JSON")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("compare", help="does B beat A by >= 0.005 nats at p < 0.01? (RUNS_A... -- RUNS_B...)",
                       description="Compare two sets of run folders (several seeds each): mean ± std of val_bpb and "
                                   "val_loss, B - A in nats, and the one-sided Welch t-test p-value that B beats A "
                                   "by at least --margin nats (the challenge's record bar: 0.005 at p < 0.01).")
    p.add_argument("--force", action="store_true",
                   help="compare even if validation data, tokenizer or evaluation mode differ")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--plot", metavar="FILE", help="PNG of the per-seed values and loss curves (default: compare.png)")
    p.add_argument("--margin", type=float, help="nats B must win by (default 0.005)")
    p.add_argument("runs", nargs=argparse.REMAINDER, metavar="RUNS_A... -- RUNS_B...",
                   help="run folders (or folders of run folders) of side A, then --, then side B")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="one table of runs (markdown or --json), plus overlaid loss curves (--plot)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or folders of run folders")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--plot", metavar="FILE", help="write the runs' training-loss curves, overlaid, to this PNG")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sweep", help="search configs x seeds with Optuna (grid | random | tpe | greedy), one machine or many",
                       description="Run the trials of a sweep spec (TOML): each trial trains every seed of one "
                                   "config as an ordinary run folder; objective = mean val_bpb of the artifact. "
                                   "Resumable: run the same command again to continue.")
    p.add_argument("spec", metavar="SPEC.toml", help="the sweep spec (see README: Search)")
    p.add_argument("--out", metavar="DIR", help="sweep folder: runs, logs, study.db, results (default: sweeps/<name>)")
    p.add_argument("--storage", metavar="URL", help="Optuna RDB URL shared by many machines, e.g. "
                   "postgresql://user:pw@host/db (default: sqlite:///<out>/study.db)")
    p.add_argument("--worker", action="store_true", help="only run trials of the (shared) study; write no results")
    p.add_argument("--report", action="store_true", help="only write the results from the study as it stands")
    p.add_argument("--jobs", type=int, default=1, help="trials side by side (one GPU each, else --threads CPU threads each)")
    p.add_argument("--threads", type=int, help="CPU threads per trial (default: CPU cores / --jobs)")
    p.add_argument("--gpus-per-trial", type=int, default=1, help="GPUs per trial when GPUs exist (default 1)")
    p.add_argument("--train-command", metavar="CMD", help="what trains one run, given pgolf train's arguments "
                   "(default: python -m pgolf train; e.g. 'torchrun --standalone --nproc_per_node=8 -m pgolf train')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra [fixed] override for every trial (repeatable)")
    p.add_argument("--data", help="= --set data.path=DIR")
    p.add_argument("--tokenizer", help="= --set data.tokenizer=MODEL")
    p.add_argument("--quiet", action="store_true", help="no line per finished trial")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("submit", help="the challenge's submission folder from a run (or several seeds of one config)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run folder(s) of one config, one per seed")
    p.add_argument("--out", required=True, metavar="DIR", help="submission folder to write")
    p.add_argument("--name", help="submission name (default: 'pgolf <recipe>')")
    p.add_argument("--author", help="your name (default: a placeholder)")
    p.add_argument("--github-id", help="your GitHub id (default: a placeholder)")
    p.add_argument("--blurb", help="one paragraph on what is new (default: a placeholder)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out folder, and submit even when "
                   "the script pgolf writes now differs in size from the code the runs counted (their scores came "
                   "from other code)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("traceback", help="map a traceback from a submitted train_gpt.py back to pgolf's repository")
    p.add_argument("linemap", metavar="LINEMAP", help="train_gpt.linemap.json from the submission folder")
    p.add_argument("traceback", nargs="?", metavar="FILE", help="file holding the traceback (default: standard input)")
    p.add_argument("--script", metavar="TRAIN_GPT", help="check that this train_gpt.py is the one the map belongs to")
    p.set_defaults(func=cmd_traceback)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ShardError, TokenizerError, DataMismatchError, InputError, ArtifactError,
            ChallengeFormatError, DownloadError, DocsError, CheckpointError, FileNotFoundError, FileExistsError) as exc:
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a failed write (full disk, read-only folder): the message names the file
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
