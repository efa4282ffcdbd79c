"""A stand-in for the Hugging Face Hub on 127.0.0.1: dataset repos served in the Hub's URL layout, no network.

What huggingface_hub (2.x) asks for, and what is answered here:
- GET  /api/datasets/{repo}/revision/{rev}             -> {"id", "sha", "siblings"} (HfApi.dataset_info)
- POST /api/datasets/{repo}/paths-info/{rev}           -> [{"type": "file", "path", "size", "oid", "lfs"}]
                                                          (HfApi.get_paths_info; form field "paths", repeated)
- HEAD /datasets/{repo}/resolve/{rev}/{path}           -> ETag (the sha256), X-Repo-Commit, Content-Length
- GET  /datasets/{repo}/resolve/{rev}/{path}           -> the bytes; "Range: bytes=N-" -> 206 + Content-Range
Unknown repos, revisions and files get the Hub's 404s with X-Error-Code RepoNotFound / RevisionNotFound /
EntryNotFound (huggingface_hub turns those into its typed errors).

Every request is logged (method, path, Range header). `drop_once[path] = n` makes the first GET of that file
send n bytes of its body and then close the connection (a dropped download); `on_drop(path)` runs at that moment.
The server runs in a daemon thread and shuts itself down after `max_seconds`, whatever the test does.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

API = re.compile(r"^/api/datasets/(?P<repo>[^/]+/[^/]+)(?:/(?P<what>revision|paths-info)/(?P<rev>[^/]+))?$")
RESOLVE = re.compile(r"^/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    drop_once: dict[str, int] = field(default_factory=dict)
    on_drop: Callable[[str], None] | None = None
    max_seconds: float = 120.0

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> Repo:
        commit = hashlib.sha1((repo_id + "\0".join(sorted(files))).encode()).hexdigest()
        self.repos[repo_id] = Repo(dict(files), commit)
        return self.repos[repo_id]

    def count(self, method: str, path_end: str) -> int:
        """Requests of `method` whose URL path ends with `path_end`."""
        return sum(1 for m, p, _ in self.requests if m == method and p.endswith(path_end))

    def resolve_requests(self) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if "/resolve/" in r[1]]

    # ------------------------------------------------------------------ serving

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # an idle keep-alive connection is closed after this

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                hub._handle(self, "GET")

            def do_HEAD(self) -> None:
                hub._handle(self, "HEAD")

            def do_POST(self) -> None:
                hub._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(self.max_seconds, self.server.shutdown)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((method, path, h.headers.get("Range")))
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if method == "POST" else b""
        if (m := API.match(path)) and method in ("GET", "POST"):
            return self._api(h, method, m, body)
        if (m := RESOLVE.match(path)) and method in ("GET", "HEAD"):
            return self._resolve(h, method, m)
        self._send(h, 404, b"not found", {"X-Error-Code": "RepoNotFound"})

    def _repo(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._send(h, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            return None
        if rev not in ("main", repo.commit):
            self._send(h, 404, b'{"error": "Revision not found"}', {"X-Error-Code": "RevisionNotFound"})
            return None
        return repo

    def _api(self, h: BaseHTTPRequestHandler, method: str, m: re.Match, body: bytes) -> None:
        repo = self._repo(h, m["repo"], m["rev"] or "main")
        if repo is None:
            return
        if m["what"] == "paths-info" and method == "POST":
            asked = parse_qs(body.decode())["paths"]
            infos = [{"type": "file", "path": p, "size": len(repo.files[p]),
                      "oid": hashlib.sha1(b"blob %d\0" % len(repo.files[p]) + repo.files[p]).hexdigest(),
                      "lfs": {"oid": repo.sha256(p), "size": len(repo.files[p]), "pointerSize": 134}}
                     for p in asked if p in repo.files]
            return self._send(h, 200, json.dumps(infos).encode(), {"Content-Type": "application/json"})
        info = {"id": m["repo"], "sha": repo.commit, "private": False,
                "siblings": [{"rfilename": p} for p in sorted(repo.files)]}
        self._send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"})

    def _resolve(self, h: BaseHTTPRequestHandler, method: str, m: re.Match) -> None:
        repo = self._repo(h, m["repo"], m["rev"])
        if repo is None:
            return
        path = m["path"]
        if path not in repo.files:
            return self._send(h, 404, b"Entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit})
        data = repo.files[path]
        headers = {"ETag": f'"{repo.sha256(path)}"', "X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        status, start = 200, 0
        if method == "GET" and (rng := re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range") or "")):
            start = int(rng[1])
            end = int(rng[2]) + 1 if rng[2] else len(data)
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            status, data = 206, data[start:end]
        if method == "GET" and path in self.drop_once:
            cut = self.drop_once.pop(path)
            return self._drop(h, status, data, headers, cut, path)
        self._send(h, status, b"" if method == "HEAD" else data, headers, length=len(data))

    def _drop(self, h, status, data, headers, cut, path) -> None:
        h.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data[:cut])
        h.wfile.flush()
        if self.on_drop is not None:
            self.on_drop(path)
        h.connection.shutdown(socket.SHUT_RDWR)
        h.close_connection = True

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str],
              length: int | None = None) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        if body:
            h.wfile.write(body)
