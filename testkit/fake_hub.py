"""A stand-in for the Hugging Face Hub that speaks its wire protocol, for the real clients
(huggingface_hub, transformers, vLLM, Ray Serve LLM) loading a model by id.

No usable Hub server is on PyPI (`olah` answers 401 where the Hub answers 404 EntryNotFound,
which breaks transformers' AutoTokenizer), so this serves what those clients call:
- `GET /api/models/{repo}[/revision/{rev}]`: `sha`, `siblings`, `gated`;
- `GET /api/models/{repo}/tree/{rev}[/{path}]`: `type`, `path`, `size`, `oid`;
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: `X-Repo-Commit`, `ETag`, `Content-Length`,
  `Accept-Ranges` and `Range`, uncompressed;
- the Hub's errors: 404 with `X-Error-Code` RepoNotFound / RevisionNotFound / EntryNotFound,
  and 401 `GatedRepo` for a gated repo asked without a token it accepts.

Stdlib only, so it runs as a plain `python3 fake_hub.py` in the local node's network:
`--repo org/name=DIR` (repeatable) serves DIR's files at revision `main` and at its commit,
`--gated org/name` asks for `--token`. Each request is logged to stdout, one line each, so a
test can count what was downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

BRANCH = "main"
REPO_ID = r"[A-Za-z0-9][\w.-]*/[\w.-]+"
API_INFO = re.compile(rf"^/api/models/(?P<repo>{REPO_ID})(?:/revision/(?P<rev>[^/]+))?$")
API_TREE = re.compile(rf"^/api/models/(?P<repo>{REPO_ID})/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
RESOLVE = re.compile(rf"^/(?P<repo>{REPO_ID})/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Repo:
    id: str
    root: Path
    gated: bool = False
    files: dict[str, Path] = field(init=False)
    oids: dict[str, str] = field(init=False)  # path -> sha256 (the Hub's LFS oid and ETag)
    sha: str = field(init=False)  # the one commit

    def __post_init__(self) -> None:
        self.files = {p.relative_to(self.root).as_posix(): p for p in sorted(self.root.rglob("*")) if p.is_file()}
        self.oids = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in self.files.items()}
        self.sha = hashlib.sha1("".join(f"{k}\0{v}\n" for k, v in self.oids.items()).encode()).hexdigest()

    def has_revision(self, rev: str) -> bool:
        return rev in (BRANCH, self.sha)

    def tree(self, prefix: str, recursive: bool) -> list[dict[str, object]]:
        prefix = prefix.strip("/")
        base = f"{prefix}/" if prefix else ""
        entries: dict[str, dict[str, object]] = {}
        for path, file in self.files.items():
            if not path.startswith(base):
                continue
            rest = path[len(base) :]
            if "/" in rest and not recursive:
                sub = base + rest.split("/", 1)[0]
                entries[sub] = {"type": "directory", "path": sub, "size": 0, "oid": self.oids[path][:40]}
                continue
            size = file.stat().st_size
            oid = self.oids[path]
            lfs = {"oid": oid, "size": size, "pointerSize": 134}
            entries[path] = {"type": "file", "path": path, "size": size, "oid": oid[:40], "lfs": lfs}
        return sorted(entries.values(), key=lambda e: str(e["path"]))


class Hub:
    def __init__(self, repos: list[Repo], token: str | None = None):
        self.repos = {r.id: r for r in repos}
        self.token = token

    def authorized(self, repo: Repo, authorization: str | None) -> bool:
        return not repo.gated or (self.token is not None and authorization == f"Bearer {self.token}")


class Handler(BaseHTTPRequestHandler):
    server_version = "fake-hub/1"
    protocol_version = "HTTP/1.1"
    hub: Hub

    def log_message(self, format: str, *args: object) -> None:  # one line per request, to stdout
        sys.stdout.write(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")
        sys.stdout.flush()

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _error(self, status: int, code: str, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, doc: object, repo: Repo) -> None:
        data = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _repo(self, repo_id: str, rev: str | None) -> Repo | None:
        """The repo if it exists, is readable with this request's token and has `rev`; else the
        Hub's error is sent and None returned."""
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if not self.hub.authorized(repo, self.headers.get("Authorization")):
            msg = f"Access to model {repo_id} is restricted. You must be authenticated to access it."
            self._error(401, "GatedRepo", msg)
            return None
        if rev is not None and not repo.has_revision(unquote(rev)):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev)}")
            return None
        return repo

    def _serve(self, body: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        if m := API_INFO.match(path):
            if repo := self._repo(m["repo"], m["rev"]):
                self._json(self._info(repo), repo)
        elif m := API_TREE.match(path):
            if repo := self._repo(m["repo"], m["rev"]):
                prefix = m["path"] or ""
                if prefix and prefix.strip("/") not in {p.rsplit("/", 1)[0] for p in repo.files if "/" in p}:
                    self._error(404, "EntryNotFound", f"{prefix} does not exist on {m['rev']}")
                else:
                    self._json(repo.tree(prefix, "recursive=true" in url.query.lower()), repo)
        elif m := RESOLVE.match(path):
            if repo := self._repo(m["repo"], m["rev"]):
                self._file(repo, m["path"], body)
        else:
            self._error(404, "RepoNotFound", "Not found")

    def _info(self, repo: Repo) -> dict[str, object]:
        return {
            "_id": repo.sha[:24],
            "id": repo.id,
            "modelId": repo.id,
            "sha": repo.sha,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": p} for p in repo.files],
        }

    def _file(self, repo: Repo, path: str, body: bool) -> None:
        file = repo.files.get(path)
        if file is None:
            self._error(404, "EntryNotFound", f"{path} does not exist on {BRANCH}")
            return
        data = file.read_bytes()
        start, end, status = 0, len(data), 200
        if (rng := self.headers.get("Range")) and (r := RANGE.match(rng.strip())):
            a, b = r.groups()
            if a:
                start, end = int(a), min(int(b) + 1, len(data)) if b else len(data)
            else:  # the last b bytes
                start, end = len(data) - int(b), len(data)
            if start >= len(data) or start >= end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{repo.oids[path]}"')
        self.send_header("X-Repo-Commit", repo.sha)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start:end])


def serve(host: str, port: int, hub: Hub) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"hub": hub})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--repo", action="append", default=[], metavar="ORG/NAME=DIR")
    parser.add_argument("--gated", action="append", default=[], metavar="ORG/NAME")
    parser.add_argument("--token", help="the token gated repos accept")
    args = parser.parse_args(argv)
    repos = []
    for spec in args.repo:
        repo_id, _, root = spec.partition("=")
        repos.append(Repo(repo_id, Path(root), gated=repo_id in args.gated))
    server = serve(args.host, args.port, Hub(repos, args.token))
    print(f"fake hub on http://{args.host}:{server.server_port}: {', '.join(r.id for r in repos)}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
