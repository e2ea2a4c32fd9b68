"""A small Hugging Face Hub-compatible HTTP server for tests, run in a thread on 127.0.0.1.

It implements the endpoints the real ``huggingface_hub`` 2.4 client hits for create/commit/list/download
(``/work/shared/REAL_INPUT.md``, "Hugging Face Hub"): repo creation (409 with ``url`` when the repo exists),
``validate-yaml``, ``preupload`` (always ``uploadMode: "regular"`` so neither git-LFS nor xet is touched, with the
blob ``oid`` of a file already stored so the client can skip unchanged files), the ndjson ``commit`` endpoint, repo
info (with ``sha``), listing, tree listing and ``resolve`` (HEAD and GET, ``ETag`` = git blob SHA-1,
``X-Repo-Commit``, ``Range``). Errors carry ``X-Error-Code``/``X-Error-Message``; HEAD errors carry no body.

State (blobs by SHA-1 and a JSON snapshot of repos and commits) lives in a temporary folder. Every request is
recorded (method, path, headers, raw body) so tests can assert on what went over the wire, and faults can be
injected per endpoint (``fail_next["commit"] = 500``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["FakeHub", "RecordedRequest", "git_blob_sha1"]

_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"

# What the Hub's metadata validation checks, as far as our cards go (an independent, partial list: not the
# list the library under test uses).
_HUB_LICENSES = frozenset(
    {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "gpl-3.0", "llama3", "gemma", "other"}
)
_HUB_LIBRARIES = frozenset({"peft", "transformers", "safetensors", "diffusers", "timm", "sentence-transformers"})
_REPO_ID = re.compile(rf"\A(?:{_REPO_PART}/)?{_REPO_PART}\Z")
_LANGUAGE = re.compile(r"\A[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*\Z")


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub sends as ``ETag`` and tree ``oid`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id, not security


@dataclass
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Commit:
    oid: str
    message: str
    files: dict[str, str]  # path -> blob sha1
    parent: str | None
    date: str


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: list[_Commit] = field(default_factory=list)

    @property
    def head(self) -> _Commit:
        return self.commits[-1]


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _validate_card_yaml(content: str) -> list[str]:
    """The Hub-side checks of README front matter that matter for model cards."""
    match = re.match(r"\A---\n(.*?)\n---\n", content, re.DOTALL)
    if not match:
        return []  # no metadata is a warning on the Hub, not an error
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        return [f"invalid YAML: {exc}"]
    if not isinstance(meta, dict):
        return ["metadata must be a mapping"]
    errors: list[str] = []
    if "license" in meta:
        lic = meta["license"]
        if lic not in _HUB_LICENSES:
            errors.append(f'"license" must be a Hub license id, got {lic!r}')
        if lic == "other" and not ({"license_name", "license_link"} <= set(meta)):
            errors.append('"license: other" needs "license_name" and "license_link"')
    if "library_name" in meta and meta["library_name"] not in _HUB_LIBRARIES:
        errors.append(f'"library_name" is not a known library: {meta["library_name"]!r}')
    for key in ("base_model", "datasets"):
        if key in meta:
            values = meta[key] if isinstance(meta[key], list) else [meta[key]]
            for value in values:
                if not isinstance(value, str) or not _REPO_ID.match(value):
                    errors.append(f'"{key}" must be Hub repo ids, got {value!r}')
    if "language" in meta:
        values = meta["language"] if isinstance(meta["language"], list) else [meta["language"]]
        errors += [f'"language" must be ISO 639 codes, got {v!r}' for v in values if not _LANGUAGE.match(str(v))]
    if "tags" in meta and not (
        isinstance(meta["tags"], list) and all(isinstance(t, str) and t for t in meta["tags"])
    ):
        errors.append('"tags" must be a list of non-empty strings')
    for key, value in meta.items():
        if value is None or value in ("", [], {}):
            errors.append(f'"{key}" must not be empty')
    return errors


class FakeHub:
    """A Hub-compatible server holding its state under ``state_dir``.

    Attributes:
        url: ``http://127.0.0.1:<port>``.
        requests: every request received, in order.
        fail_next: endpoint name (``create``, ``preupload``, ``commit``, ``resolve``, ``info``) -> HTTP status to
            answer once, instead of handling the request.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        (self.state_dir / "blobs").mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.requests: list[RecordedRequest] = []
        self.fail_next: dict[str, int] = {}
        self.lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------------------------------- test helpers
    def blob(self, sha1: str) -> bytes:
        return (self.state_dir / "blobs" / sha1).read_bytes()

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        """``{path: content}`` at the head of ``repo_id``."""
        with self.lock:
            repo = self.repos[(repo_type, repo_id)]
            return {path: self.blob(sha) for path, sha in repo.head.files.items()}

    def commit_count(self, repo_id: str, repo_type: str = "model") -> int:
        with self.lock:
            return len(self.repos[(repo_type, repo_id)].commits)

    def exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self.lock:
            return (repo_type, repo_id) in self.repos

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        with self.lock:
            return self.repos[(repo_type, repo_id)].private

    def server_side_commit(self, repo_id: str, changes: dict[str, bytes | None], *, message: str = "edit") -> str:
        """Commit ``changes`` (path -> new bytes, or None to delete) directly, as someone with write access would."""
        with self.lock:
            repo = self.repos[("model", repo_id)]
            files = dict(repo.head.files)
            for path, data in changes.items():
                if data is None:
                    files.pop(path, None)
                else:
                    files[path] = self._store(data)
            return self._new_commit(repo, files, message).oid

    def swap_blob(self, repo_id: str, path: str, data: bytes) -> None:
        """Replace the stored bytes of ``path`` at head without a new commit (storage-level tampering)."""
        with self.lock:
            sha = self.repos[("model", repo_id)].head.files[path]
            (self.state_dir / "blobs" / sha).write_bytes(data)

    def bodies(self) -> bytes:
        """Every request body received, concatenated, plus the base64-decoded content of committed files."""
        chunks: list[bytes] = []
        for req in self.requests:
            chunks.append(req.body)
            if req.headers.get("content-type", "").startswith("application/x-ndjson"):
                for line in req.body.splitlines():
                    item = json.loads(line)
                    if item.get("key") == "file":
                        chunks.append(base64.b64decode(item["value"]["content"]))
        return b"\n".join(chunks)

    # ------------------------------------------------------------------------------------------------- state
    def _store(self, data: bytes) -> str:
        sha = git_blob_sha1(data)
        path = self.state_dir / "blobs" / sha
        if not path.exists():
            path.write_bytes(data)
        return sha

    def _new_commit(self, repo: _Repo, files: dict[str, str], message: str) -> _Commit:
        parent = repo.commits[-1].oid if repo.commits else None
        commit = _Commit(oid=uuid.uuid4().hex + uuid.uuid4().hex[:8], message=message, files=files, parent=parent,
                         date=_now())
        repo.commits.append(commit)
        self._save()
        return commit

    def _save(self) -> None:
        snapshot = {
            f"{t}:{rid}": {
                "private": repo.private,
                "commits": [{"oid": c.oid, "message": c.message, "files": c.files, "parent": c.parent}
                            for c in repo.commits],
            }
            for (t, rid), repo in self.repos.items()
        }
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(snapshot, indent=1))
        tmp.replace(self.state_dir / "state.json")

    def _repo(self, repo_type: str, repo_id: str, *, authed: bool) -> _Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authed):
            raise _HubError(404, "RepoNotFound", f"Repository Not Found for url: {repo_id}.")
        return repo

    def _commit_at(self, repo: _Repo, rev: str) -> _Commit:
        if rev == "main":
            return repo.head
        for commit in repo.commits:
            if commit.oid == rev:
                return commit
        raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{_PREFIX[repo_type]}{repo_id}"

    def _info(self, repo: _Repo, commit: _Commit) -> dict[str, Any]:
        author = repo.repo_id.split("/")[0]
        card: dict[str, Any] | None = None
        if "README.md" in commit.files:
            text = self.blob(commit.files["README.md"]).decode("utf-8", "replace")
            match = re.match(r"\A---\n(.*?)\n---\n", text, re.DOTALL)
            card = yaml.safe_load(match.group(1)) if match else None
        info: dict[str, Any] = {
            "_id": hashlib.sha256(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": author,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.commits[0].date,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card.get("tags", [])) if isinstance(card, dict) else [],
            "library_name": card.get("library_name") if isinstance(card, dict) else None,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }
        if card is not None:
            info["cardData"] = card
        return info

    # ---------------------------------------------------------------------------------------------- routing
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                return

            def _read_body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _dispatch(self) -> None:
                body = self._read_body()
                split = urlsplit(self.path)
                with hub.lock:
                    hub.requests.append(
                        RecordedRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                try:
                    status, headers, payload = hub._route(self.command, split.path, parse_qs(split.query), body,
                                                          dict(self.headers))
                except _HubError as err:
                    status = err.status
                    headers = {"X-Error-Message": err.message}
                    if err.code:
                        headers["X-Error-Code"] = err.code
                    payload = json.dumps({"error": err.message, **err.extra}).encode()
                    headers["Content-Type"] = "application/json"
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if self.command == "HEAD":
                    if "Content-Length" not in headers:
                        self.send_header("Content-Length", "0" if status >= 400 else str(len(payload)))
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch  # noqa: N815

        return Handler

    def _maybe_fail(self, name: str) -> None:
        with self.lock:
            status = self.fail_next.pop(name, None)
        if status is not None:
            raise _HubError(status, None, f"injected failure of {name}")

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        authed = any(k.lower() == "authorization" and v.startswith("Bearer ") for k, v in headers.items())
        path = unquote(path)
        if method == "POST" and path == "/api/repos/create":
            return self._create(json.loads(body), authed)
        if method == "DELETE" and path == "/api/repos/delete":
            return self._delete(json.loads(body), authed)
        if method == "POST" and path == "/api/validate-yaml":
            errors = _validate_card_yaml(json.loads(body)["content"])
            if errors:
                return 400, {"Content-Type": "text/plain"}, "\n".join(errors).encode()
            return _json({"errors": [], "warnings": []})
        if method == "GET" and path == "/api/whoami-v2":
            if not authed:
                raise _HubError(401, None, "Invalid credentials in Authorization header")
            return _json({"type": "user", "name": "tester", "orgs": []})
        m = re.match(r"\A/api/(models|datasets|spaces)\Z", path)
        if m and method == "GET":
            return self._list(_TYPES[m.group(1)], query, authed)
        m = re.match(rf"\A/api/(models|datasets|spaces)/({_REPO_PART}/{_REPO_PART})(/.*)?\Z", path)
        if m:
            return self._api(method, _TYPES[m.group(1)], m.group(2), m.group(3) or "", query, body, authed)
        m = re.match(rf"\A/(datasets/|spaces/)?({_REPO_PART}/{_REPO_PART})/resolve/([^/]+)/(.+)\Z", path)
        if m and method in ("GET", "HEAD"):
            repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(m.group(1) or "", "model")
            return self._resolve(method, repo_type, m.group(2), m.group(3), m.group(4), headers, authed)
        raise _HubError(404, None, f"no route for {method} {path}")

    def _create(self, req: dict[str, Any], authed: bool) -> tuple[int, dict[str, str], bytes]:
        self._maybe_fail("create")
        if not authed:
            raise _HubError(401, None, "You must be authenticated to create a repo")
        repo_type = req.get("type") or "model"
        repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else f"tester/{req['name']}"
        url = self._repo_url(repo_type, repo_id)
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise _HubError(409, None, "You already created this model repo", {"url": url})
            private = req.get("private")
            if private is None:
                private = req.get("visibility") == "private"
            repo = _Repo(repo_id=repo_id, repo_type=repo_type, private=bool(private))
            self.repos[(repo_type, repo_id)] = repo
            self._new_commit(repo, {".gitattributes": self._store(_GITATTRIBUTES)}, "initial commit")
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _delete(self, req: dict[str, Any], authed: bool) -> tuple[int, dict[str, str], bytes]:
        repo_type = req.get("type") or "model"
        repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else f"tester/{req['name']}"
        with self.lock:
            self._repo(repo_type, repo_id, authed=authed)
            del self.repos[(repo_type, repo_id)]
            self._save()
        return _json({})

    def _list(self, repo_type: str, query: dict[str, list[str]], authed: bool) -> tuple[int, dict[str, str], bytes]:
        author = query.get("author", [None])[0]
        search = query.get("search", [None])[0]
        filters = query.get("filter", [])
        limit = int(query.get("limit", ["1000"])[0])
        out = []
        with self.lock:
            for (t, rid), repo in sorted(self.repos.items()):
                if t != repo_type or (repo.private and not authed):
                    continue
                info = self._info(repo, repo.head)
                if author and info["author"] != author:
                    continue
                if search and search not in rid:
                    continue
                if any(f not in info["tags"] for f in filters):
                    continue
                if "cardData" not in query:
                    info.pop("cardData", None)
                out.append(info)
        return _json(out[:limit])

    def _api(
        self, method: str, repo_type: str, repo_id: str, rest: str, query: dict[str, list[str]], body: bytes,
        authed: bool,
    ) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            repo = self._repo(repo_type, repo_id, authed=authed)
            if method == "GET" and rest == "":
                self._maybe_fail("info")
                return _json(self._info(repo, repo.head))
            m = re.match(r"\A/revision/([^/]+)\Z", rest)
            if method == "GET" and m:
                self._maybe_fail("info")
                return _json(self._info(repo, self._commit_at(repo, m.group(1))))
            m = re.match(r"\A/tree/([^/]+)(?:/(.*))?\Z", rest)
            if method == "GET" and m:
                return self._tree(repo, m.group(1), m.group(2) or "", query)
            m = re.match(r"\A/preupload/([^/]+)\Z", rest)
            if method == "POST" and m:
                self._maybe_fail("preupload")
                if not authed:
                    raise _HubError(401, None, "write access needs a token")
                head = self._commit_at(repo, m.group(1))
                files = [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                     **({"oid": head.files[f["path"]]} if f["path"] in head.files else {})}
                    for f in json.loads(body)["files"]
                ]
                return _json({"files": files, "commitOid": head.oid})
            m = re.match(r"\A/commit/([^/]+)\Z", rest)
            if method == "POST" and m:
                return self._commit(repo, m.group(1), body, authed)
        raise _HubError(404, None, f"no route for {method} {rest}")

    def _tree(self, repo: _Repo, rev: str, prefix: str, query: dict[str, list[str]]) -> tuple[int, dict, bytes]:
        commit = self._commit_at(repo, rev)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = prefix.strip("/")
        entries: dict[str, dict[str, Any]] = {}
        for path, sha in sorted(commit.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rel = path[len(prefix) + 1:] if prefix else path
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                directory = "/".join(([prefix] if prefix else []) + parts[:depth])
                entries.setdefault(directory, {"type": "directory", "path": directory, "oid": "0" * 40, "size": 0})
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "path": path, "oid": sha, "size": len(self.blob(sha))}
        return _json(list(entries.values()))

    def _commit(self, repo: _Repo, rev: str, body: bytes, authed: bool) -> tuple[int, dict[str, str], bytes]:
        self._maybe_fail("commit")
        if not authed:
            raise _HubError(401, None, "write access needs a token")
        if rev != "main":
            raise _HubError(400, None, "this server only commits to main")
        items = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not items or items[0].get("key") != "header":
            raise _HubError(400, None, "first ndjson line must be the header")
        header = items[0]["value"]
        parent = header.get("parentCommit")
        if parent is not None and parent != repo.head.oid:
            raise _HubError(412, None, f"parent commit {parent} is not the head of main ({repo.head.oid})")
        files = dict(repo.head.files)
        for item in items[1:]:
            key, value = item["key"], item["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise _HubError(400, None, "only base64 file content is supported")
                files[value["path"]] = self._store(base64.b64decode(value["content"]))
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise _HubError(404, "EntryNotFound", "A file with this name doesn't exist")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: s for p, s in files.items() if not p.startswith(prefix)}
            else:
                raise _HubError(400, None, f"unsupported commit operation {key!r} (this server has no LFS/xet)")
        commit = self._new_commit(repo, files, header.get("summary", ""))
        return _json({
            "commitOid": commit.oid,
            "commitUrl": f"{self._repo_url(repo.repo_type, repo.repo_id)}/commit/{commit.oid}",
            "pullRequestUrl": None,
        })

    def _resolve(
        self, method: str, repo_type: str, repo_id: str, rev: str, path: str, headers: dict[str, str], authed: bool
    ) -> tuple[int, dict[str, str], bytes]:
        self._maybe_fail("resolve")
        with self.lock:
            repo = self._repo(repo_type, repo_id, authed=authed)
            commit = self._commit_at(repo, rev)
            if path not in commit.files:
                raise _HubError(404, "EntryNotFound", f"Entry not found: {path}")
            sha = commit.files[path]
            data = self.blob(sha)
        out = {"X-Repo-Commit": commit.oid, "ETag": f'"{sha}"', "Content-Type": "application/octet-stream",
               "Accept-Ranges": "bytes"}
        rng = {k.lower(): v for k, v in headers.items()}.get("range")
        if rng and method == "GET":
            m = re.match(r"bytes=(\d+)-(\d*)", rng)
            if m:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                out["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return 206, out, data[start:end + 1]
        if method == "HEAD":
            out["Content-Length"] = str(len(data))
        return 200, out, data


def _json(obj: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()
