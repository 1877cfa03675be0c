"""A local stand-in for the Hugging Face Hub, speaking the part of its HTTP API that
`huggingface_hub` (2.x) uses to create repos, commit files and download them.

Endpoints: `POST /api/repos/create`, `POST /api/validate-yaml`, `GET /api/agent-harnesses`,
`GET /api/models/{repo}[/revision/{rev}]` (model info), `GET /api/models/{repo}/tree/{rev}[/{path}]`,
`POST /api/models/{repo}/preupload/{rev}` (every file "regular", i.e. inlined in the commit),
`POST /api/models/{repo}/commit/{rev}` (NDJSON: header, file, deletedFile) and
`HEAD|GET /{repo}/resolve/{rev}/{path}` with the `ETag` and `X-Repo-Commit` headers. Errors carry
the `X-Error-Code` header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) that the client maps
to its exceptions. Large-file (LFS/Xet) uploads are not supported; nothing here needs them.

Usage:
    with HubServer() as hub:
        hub.endpoint  # "http://127.0.0.1:PORT"
        hub.fail_commits = True  # answer 500 to every commit, after reading it
        hub.fail_files = {"x.json"}  # answer 500 to every download of these files
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> files
    branches: dict[str, str] = field(default_factory=dict)  # branch -> sha
    messages: list[str] = field(default_factory=list)

    def resolve(self, revision: str) -> str | None:
        return self.branches.get(revision) or (revision if revision in self.commits else None)


def _git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubServer:
    """In-memory Hub; `repos` maps repo ids to `Repo`, `authorizations` lists the auth headers."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.fail_commits = False
        self.fail_files: set[str] = set()
        self.authorizations: list[str] = []
        self.unknown_requests: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> HubServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down; later requests fail to connect (the Hub is "offline")."""
        if self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]

    # ------------------------------------------------------------------ state changes

    def create_repo(self, repo_id: str) -> bool:
        with self._lock:
            if repo_id in self.repos:
                return False
            repo = Repo()
            self._commit(
                repo,
                {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                "initial commit",
            )
            self.repos[repo_id] = repo
            return True

    def commit(
        self, repo: Repo, branch: str, add: dict[str, bytes], delete: list[str], message: str
    ) -> str:
        with self._lock:
            files = dict(repo.commits[repo.branches[branch]]) if branch in repo.branches else {}
            for path in delete:
                files.pop(path, None)
            files.update(add)
            return self._commit(repo, files, message, branch)

    @staticmethod
    def _commit(repo: Repo, files: dict[str, bytes], message: str, branch: str = "main") -> str:
        digest = hashlib.sha1(json.dumps([message, len(repo.commits)]).encode())
        for path in sorted(files):
            digest.update(path.encode() + _git_oid(files[path]).encode())
        sha = digest.hexdigest()
        repo.commits[sha] = files
        repo.branches[branch] = sha
        repo.messages.append(message)
        return sha


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        # -------------------------------------------------------------- plumbing

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(
            self, status: int, payload=None, headers: dict | None = None, body: bytes | None = None
        ):
            if body is None:
                body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, headers: dict | None = None):
            headers = {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})}
            self._send(status, {"error": message}, headers)

        def _repo(self, repo_id: str, revision: str | None = None):
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                return None, None
            sha = repo.resolve(unquote(revision or "main"))
            if sha is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None, None
            return repo, sha

        def _route(self) -> None:
            if "Authorization" in self.headers:
                hub.authorizations.append(self.headers["Authorization"])
            path = urlsplit(self.path).path
            for pattern, method in _ROUTES:
                match = re.fullmatch(pattern, path)
                if match and self.command in method[0]:
                    return getattr(self, method[1])(
                        *[unquote(g) if g else g for g in match.groups()]
                    )
            hub.unknown_requests.append(f"{self.command} {self.path}")
            self._body()
            self._error(
                404, "NotImplemented", f"hub_server does not implement {self.command} {path}"
            )

        do_GET = do_POST = do_HEAD = _route

        # -------------------------------------------------------------- API

        def create_repo(self):
            data = json.loads(self._body() or b"{}")
            repo_id = f"{data.get('organization') or 'user'}/{data['name']}"
            payload = {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id, "id": repo_id}
            if not hub.create_repo(repo_id):  # the Hub answers 409 with the url
                payload["error"] = "You already created this model repo"
                return self._send(409, payload, {"X-Error-Message": payload["error"]})
            self._send(200, payload)

        def agent_harnesses(self):  # user-agent metadata the client fetches once a day
            self._send(200, {"standardEnvVars": [], "harnesses": {}})

        def validate_yaml(self):
            self._body()
            self._send(200, {"errors": [], "warnings": []})

        def model_info(self, repo_id: str, revision: str | None):
            repo, sha = self._repo(repo_id, revision)
            if repo is None:
                return
            siblings = [{"rfilename": p} for p in sorted(repo.commits[sha])]
            self._send(
                200,
                {
                    "_id": repo_id,
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": sha,
                    "private": False,
                    "disabled": False,
                    "gated": False,
                    "tags": [],
                    "siblings": siblings,
                    "lastModified": "2024-01-01T00:00:00.000Z",
                    "createdAt": "2024-01-01T00:00:00.000Z",
                },
            )

        def tree(self, repo_id: str, revision: str, prefix: str | None):
            repo, sha = self._repo(repo_id, revision)
            if repo is None:
                return
            prefix = (prefix or "").strip("/")
            entries = [
                {"type": "file", "path": p, "size": len(c), "oid": _git_oid(c)}
                for p, c in sorted(repo.commits[sha].items())
                if not prefix or p.startswith(prefix + "/")
            ]
            self._send(200, entries)

        def preupload(self, repo_id: str, revision: str):
            data = json.loads(self._body() or b"{}")
            repo, sha = self._repo(repo_id, revision)
            if repo is None:
                return
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in data.get("files", [])
            ]
            self._send(200, {"files": files, "commitOid": sha})

        def commit(self, repo_id: str, revision: str):
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            repo, _ = self._repo(repo_id, revision)
            if repo is None:
                return
            if hub.fail_commits:
                return self._send(500, {"error": "Internal Error - simulated failure"})
            header = next(item["value"] for item in lines if item["key"] == "header")
            add, delete = {}, []
            for item in lines:
                value = item["value"]
                if item["key"] == "file":
                    add[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "deletedFile":
                    delete.append(value["path"])
                elif item["key"] != "header":
                    return self._error(
                        400, "BadRequest", f"unsupported commit operation {item['key']}"
                    )
            branch = unquote(revision)
            if branch not in repo.branches:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            sha = hub.commit(repo, branch, add, delete, header["summary"])
            self._send(
                200,
                {
                    "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{sha}",
                    "commitOid": sha,
                    "success": True,
                },
            )

        def resolve(self, repo_id: str, revision: str, filename: str):
            repo, sha = self._repo(repo_id, revision)
            if repo is None:
                return
            if filename in hub.fail_files:
                return self._error(500, "", "Internal error")
            content = repo.commits[sha].get(filename)
            if content is None:
                return self._error(
                    404, "EntryNotFound", f"{filename} does not exist", {"X-Repo-Commit": sha}
                )
            headers = {"X-Repo-Commit": sha, "ETag": f'"{_git_oid(content)}"'}
            self._send(200, headers=headers, body=content)

    return Handler


_REPO = r"([\w.-]+/[\w.-]+)"
_ROUTES = [
    (r"/api/repos/create", (("POST",), "create_repo")),
    (r"/api/validate-yaml", (("POST",), "validate_yaml")),
    (r"/api/agent-harnesses", (("GET",), "agent_harnesses")),
    (rf"/api/models/{_REPO}(?:/revision/([^/]+))?", (("GET",), "model_info")),
    (rf"/api/models/{_REPO}/tree/([^/]+)(?:/(.*))?", (("GET",), "tree")),
    (rf"/api/models/{_REPO}/preupload/([^/]+)", (("POST",), "preupload")),
    (rf"/api/models/{_REPO}/commit/([^/]+)", (("POST",), "commit")),
    (rf"/{_REPO}/resolve/([^/]+)/(.+)", (("GET", "HEAD"), "resolve")),
]
