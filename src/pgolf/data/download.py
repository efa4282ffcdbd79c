"""`pgolf data download`: the challenge's published FineWeb export from the Hugging Face Hub, with the options and
the layout of its data/cached_challenge_fineweb.py.

Remote, in a dataset repo under an export root: <root>/manifest.json, <root>/datasets/fineweb10B_<variant>/
fineweb_{val,train}_NNNNNN.bin, <root>/tokenizers/..., <root>/docs_selected.jsonl and its
docs_selected.source_manifest.json. The repo and root come from --repo-id / --remote-root, else from
MATCHED_FINEWEB_REPO_ID / MATCHED_FINEWEB_REMOTE_ROOT_PREFIX (read when a download starts, as the official script
reads them), else willdepueoai/parameter-golf (kevclark/parameter-golf for sp4096 and sp8192, where the records
took them from) and "datasets". Locally the same paths lie under the output root (default data/): data/manifest.json,
data/datasets/<dataset>/, data/tokenizers/, data/docs_selected.jsonl.

Manifest-driven: the manifest names the variant's dataset folder, its shard counts and its tokenizer files; all
validation shards and the first N training shards are fetched (a prefix of the frozen shuffled export, so the data
order is the records'). Every file comes from one commit of the repo. Each goes through huggingface_hub's cache
(hf_hub_download checks the size and resumes a dropped connection with an HTTP Range request) and is hard-linked
from there (copied where the file system refuses a link) under a hidden temporary name, then renamed: a file
appears under its final name only when it is complete, and costs no second copy on disk. Files already in place are
checked against the Hub's size and not fetched again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from .atomic import temporary_path
from .docs import DOCS_FILENAME, DocsError, sidecar_path, verify_docs
from .jsonio import read_json

DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
VARIANT_REPO_IDS = {"sp4096": "kevclark/parameter-golf", "sp8192": "kevclark/parameter-golf"}
DEFAULT_REMOTE_ROOT = "datasets"
REPO_ENV = "MATCHED_FINEWEB_REPO_ID"
ROOT_ENV = "MATCHED_FINEWEB_REMOTE_ROOT_PREFIX"
DOCS_SIDECAR = sidecar_path(DOCS_FILENAME).name
VARIANT_PATTERN = re.compile(r"byte260|sp[0-9]+")


class DownloadError(RuntimeError):
    """The Hub could not be reached or does not hold what was asked for; one line naming what is wrong."""


def dataset_name(variant: str) -> str:
    """byte260 -> fineweb10B_byte260, sp<N> -> fineweb10B_sp<N> (the official script's rule)."""
    if not VARIANT_PATTERN.fullmatch(variant):
        raise DownloadError(f"unknown variant {variant!r}: expected byte260 or sp<vocab size> (sp1024, sp4096, sp8192)")
    return f"fineweb10B_{variant}"


def hub_location(variant: str, repo_id: str | None = None, remote_root: str | None = None) -> tuple[str, str]:
    """(repo id, export root inside it): arguments, else the official environment variables, else the defaults."""
    repo = repo_id or os.environ.get(REPO_ENV) or VARIANT_REPO_IDS.get(variant, DEFAULT_REPO_ID)
    root = remote_root if remote_root is not None else os.environ.get(ROOT_ENV, DEFAULT_REMOTE_ROOT)
    return repo, root.strip("/")


def _relative(path: Any, manifest_file: Path, key: str) -> str:
    """A path the manifest names, as a clean relative POSIX path inside the export (no '..', not absolute)."""
    if not isinstance(path, str) or not path:
        raise DownloadError(f"{manifest_file}: {key} is {path!r}, expected a relative path")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise DownloadError(f"{manifest_file}: {key} = {path!r} must be a relative path inside the export")
    return pure.as_posix()


def plan_files(manifest: Any, manifest_file: Path, variant: str, train_shards: int, repo: str,
               with_docs: bool) -> tuple[list[str], str]:
    """The files to fetch (relative to the export root) and the tokenizer file, as the manifest describes them."""
    name = dataset_name(variant)
    datasets = manifest.get("datasets") if isinstance(manifest, dict) else None
    if not isinstance(datasets, list):
        raise DownloadError(f"{manifest_file}: no 'datasets' list; not a challenge manifest")
    entry = next((d for d in datasets if isinstance(d, dict) and d.get("name") == name), None)
    if entry is None:
        listed = ", ".join(str(d.get("name")) for d in datasets if isinstance(d, dict)) or "none"
        raise DownloadError(f"{manifest_file}: no dataset named {name} (variant {variant}); it lists: {listed}")
    stats = entry.get("stats") if isinstance(entry.get("stats"), dict) else {}
    counts = {}
    for key in ("files_train", "files_val"):
        if not isinstance(stats.get(key), int) or stats[key] < 0:
            raise DownloadError(f"{manifest_file}: dataset {name} has no stats.{key} (got {stats.get(key)!r})")
        counts[key] = stats[key]
    if train_shards > counts["files_train"]:
        raise DownloadError(f"{variant} has {counts['files_train']} training shards on {repo}, "
                            f"but --train-shards asks for {train_shards}")
    tokenizers = manifest.get("tokenizers") if isinstance(manifest.get("tokenizers"), list) else []
    tok = next((t for t in tokenizers if isinstance(t, dict) and t.get("name") == entry.get("tokenizer_name")), None)
    if tok is None:
        raise DownloadError(f"{manifest_file}: tokenizer {entry.get('tokenizer_name')!r} of dataset {name} "
                            f"is not in its 'tokenizers' list")
    artifacts = [_relative(tok[k], manifest_file, f"tokenizer {tok['name']}.{k}")
                 for k in ("model_path", "vocab_path", "path") if tok.get(k)]
    if not artifacts:
        raise DownloadError(f"{manifest_file}: tokenizer {tok['name']!r} names no file "
                            f"(model_path / vocab_path / path)")
    folder = f"datasets/{name}"
    files = [DOCS_SIDECAR, DOCS_FILENAME] if with_docs else []  # the sidecar first: the docs are checked against it
    files += [f"{folder}/fineweb_val_{i:06d}.bin" for i in range(counts["files_val"])]
    files += [f"{folder}/fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    return files + artifacts, artifacts[0]


class _IntoBar:
    """What hf_hub_download takes for a progress bar: forwards each chunk's bytes to one bar over all files (or to
    none), so huggingface_hub draws no bar of its own."""

    def __init__(self, bar: Any | None, seen: list[int], **_: Any) -> None:
        self.bar, self.seen = bar, seen

    def update(self, n: int = 1) -> None:
        self.seen[0] += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        pass

    def __enter__(self) -> "_IntoBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _Hub:
    """One dataset repo at one commit, through huggingface_hub; its errors become one-line DownloadErrors."""

    def __init__(self, repo_id: str, root: str, revision: str, endpoint: str | None, cache_dir: str | None) -> None:
        from huggingface_hub import constants

        self.repo, self.root, self.revision = repo_id, root, revision
        self.endpoint, self.cache_dir = endpoint, cache_dir
        self.where = endpoint or constants.ENDPOINT

    def remote(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                            OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)
        try:
            yield
        except OfflineModeIsEnabled as exc:
            raise _Offline("HF_HUB_OFFLINE is set") from exc
        except LocalEntryNotFoundError as exc:
            raise _Offline(_first_line(exc)) from exc
        except RepositoryNotFoundError as exc:
            raise DownloadError(f"dataset repo {self.repo} not found on {self.where} (check --repo-id / {REPO_ENV}; "
                                f"a private or gated repo needs `hf auth login`)") from exc
        except RevisionNotFoundError as exc:
            raise DownloadError(f"revision {self.revision!r} not found in dataset repo {self.repo}") from exc
        except EntryNotFoundError as exc:
            raise DownloadError(f"{self.repo} has no file {what}") from exc
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "an error"
            raise DownloadError(f"the Hub at {self.where} answered {status} for {what}: {_first_line(exc)}") from exc
        except _transport_errors() as exc:
            raise _Offline(f"{type(exc).__name__}: {_first_line(exc)}") from exc

    def resolve(self) -> str:
        """The commit the revision points at; every file is fetched from it."""
        from huggingface_hub import HfApi

        with self.errors(f"the revision {self.revision}"):
            info = HfApi(endpoint=self.endpoint).dataset_info(self.repo, revision=self.revision)
        if not info.sha:
            raise DownloadError(f"the Hub at {self.where} gave no commit for {self.repo}@{self.revision}")
        self.revision = info.sha
        return info.sha

    def sizes(self, rels: list[str]) -> dict[str, int]:
        """The Hub's size of each file that exists (one request per 500 paths)."""
        from huggingface_hub import HfApi

        api, found = HfApi(endpoint=self.endpoint), {}
        by_remote = {self.remote(r): r for r in rels}
        names = list(by_remote)
        for i in range(0, len(names), 500):
            with self.errors(f"the sizes of {len(names)} files"):
                infos = api.get_paths_info(self.repo, names[i : i + 500], repo_type="dataset", revision=self.revision)
            found.update({by_remote[f.path]: int(f.size) for f in infos if f.path in by_remote and hasattr(f, "size")})
        return found

    def cached(self, rel: str, bar: Any | None, offline: bool) -> tuple[Path, int]:
        """The file in huggingface_hub's cache (downloaded into it unless `offline`), resolved to the blob itself,
        and how many bytes went to `bar` on the way."""
        from huggingface_hub import hf_hub_download

        seen = [0]
        with self.errors(self.remote(rel)):
            path = hf_hub_download(repo_id=self.repo, filename=self.remote(rel), repo_type="dataset",
                                   revision=self.revision, cache_dir=self.cache_dir, endpoint=self.endpoint,
                                   local_files_only=offline, tqdm_class=lambda **kw: _IntoBar(bar, seen, **kw))
        return Path(path).resolve(strict=True), seen[0]


class _Offline(DownloadError):
    """The Hub cannot be reached (no network, or HF_HUB_OFFLINE); the message is the reason."""


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of huggingface_hub's HTTP client (httpx2 in huggingface_hub 2, httpx in 1)."""
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            return (__import__(module).TransportError,)
    return ()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)


def place(source: Path, destination: Path, verify: Callable[[Path], None] | None = None) -> str:
    """Hard-link `source` to `destination` (copy if the file system refuses), via a hidden temporary name.

    The file appears under its final name only once complete (and, with `verify`, checked). Returns "linked" or
    "copied".
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(destination)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
            how = "linked"
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(source, tmp)
            how = "copied"
        if verify is not None:
            verify(tmp)
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return how


def download(variant: str = "sp1024", train_shards: int = 80, out_root: str | Path = "data", *,
             repo_id: str | None = None, remote_root: str | None = None, revision: str = "main",
             with_docs: bool = False, skip_manifest: bool = False, endpoint: str | None = None,
             cache_dir: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Fetch the manifest, all validation shards, the first `train_shards` training shards and the tokenizer
    (with_docs: also docs_selected.jsonl and its sidecar, docs_sha256 checked) into the challenge's layout."""
    from tqdm import tqdm

    name = dataset_name(variant)
    if train_shards < 0:
        raise DownloadError(f"--train-shards must be >= 0, got {train_shards}")
    repo, root = hub_location(variant, repo_id, remote_root)
    hub = _Hub(repo, root, revision, endpoint, cache_dir)
    out = Path(out_root)
    manifest_file = out / "manifest.json"
    offline: str | None = None
    first = {"present": 1}  # the manifest, when it is used as it lies under `out`
    try:
        hub.resolve()
    except _Offline as exc:
        offline = str(exc)

    def unreachable(missing: list[str]) -> DownloadError:
        return DownloadError(f"offline: cannot reach the Hugging Face Hub at {hub.where} ({offline}), and "
                             f"{len(missing)} file(s) of {repo}/{root} are neither under {out} nor in the Hugging "
                             f"Face cache (first: {missing[0]}); connect, or set HF_ENDPOINT to a reachable mirror")

    if skip_manifest:
        if not manifest_file.is_file():
            raise DownloadError(f"--skip-manifest: {manifest_file} is not there, and the shard counts come from it "
                                f"(drop --skip-manifest to fetch it from {repo})")
    elif offline is None or not manifest_file.is_file():
        first = fetch_into(hub, ["manifest.json"], out, offline, None,
                           None if offline else hub.sizes(["manifest.json"]), unreachable)
    manifest = read_json(manifest_file, DownloadError, "manifest")
    files, tokenizer_rel = plan_files(manifest, manifest_file, variant, train_shards, repo, with_docs)
    sizes = None if offline else hub.sizes(files)
    todo = [f for f in files if not (out / f).is_file()]
    total = sum(sizes.get(f, 0) for f in todo) if sizes is not None else None
    with tqdm(total=total, desc=f"download {variant}", unit="B", unit_scale=True, unit_divisor=1024,
              disable=not progress or not todo) as bar:
        counts = fetch_into(hub, files, out, offline, bar, sizes, unreachable, progress)
    counts = {k: v + first.get(k, 0) for k, v in counts.items()}  # the manifest counts as one of the files
    data = out / "datasets" / name
    return {"data": str(data), "tokenizer": str(out / tokenizer_rel), "manifest": str(manifest_file),
            "docs": str(out / DOCS_FILENAME) if with_docs else None, "repo": repo, "remote_root": root,
            "revision": None if offline else hub.revision, "files": len(files) + 1, "sizes_checked": sizes is not None,
            "offline": offline, **counts}


def fetch_into(hub: _Hub, files: list[str], out: Path, offline: str | None, bar: Any, sizes: dict[str, int] | None,
               unreachable: Callable[[list[str]], DownloadError], progress: bool = False) -> dict[str, int]:
    """Check the files already under `out` against the Hub's sizes (all of them, before fetching any), then fetch
    and place the others."""
    if sizes is not None:
        missing = [f for f in files if f not in sizes]
        if missing:
            raise DownloadError(f"{hub.repo}@{hub.revision[:12]} has no {hub.remote(missing[0])} ({len(missing)} "
                                f"file(s) missing; is the export root {hub.root!r} right? --remote-root / {ROOT_ENV})")
        for rel in files:
            local = out / rel
            if local.is_file() and local.stat().st_size != sizes[rel]:
                raise DownloadError(f"{local}: {local.stat().st_size:,} bytes here, but {hub.repo} has "
                                    f"{sizes[rel]:,} bytes for {hub.remote(rel)}; it is a partial file or from "
                                    f"another export: delete it and run again")
    counts = {"present": 0, "fetched": 0, "linked": 0, "copied": 0, "bytes_fetched": 0}
    todo = [rel for rel in files if not (out / rel).is_file()]
    counts["present"] = len(files) - len(todo)
    for rel in todo:
        try:
            blob, seen = hub.cached(rel, bar, offline is not None)
        except _Offline:
            if offline is None:
                raise
            raise unreachable(todo[todo.index(rel):]) from None
        if sizes is not None and blob.stat().st_size != sizes[rel]:
            raise DownloadError(f"{blob}: the cached copy of {hub.remote(rel)} has {blob.stat().st_size:,} bytes, "
                                f"the Hub says {sizes[rel]:,}")
        verify = _docs_check(out, progress) if rel == DOCS_FILENAME else None
        counts[place(blob, out / rel, verify)] += 1
        counts["fetched"] += 1
        counts["bytes_fetched"] += blob.stat().st_size
        if bar is not None and blob.stat().st_size > seen:
            bar.update(blob.stat().st_size - seen)  # found in the cache (or resumed): the bar still covers the file
    return counts


def _docs_check(out: Path, progress: bool) -> Callable[[Path], None]:
    """docs_selected.jsonl is placed only if its SHA-256, size and line count are the sidecar's."""
    def verify(tmp: Path) -> None:
        try:
            verify_docs(tmp, out / DOCS_SIDECAR, progress)
        except DocsError as exc:
            raise DownloadError(str(exc).replace(str(tmp), str(out / DOCS_FILENAME))) from exc
    return verify
