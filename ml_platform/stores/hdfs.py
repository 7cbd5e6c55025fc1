"""The store on HDFS: WebHDFS (the namenode's REST API, stdlib only) for the platform's own file operations,
hdfs:// for Spark, whose bundled Hadoop client speaks the namenode's RPC.

The root is hdfs://namenode:rpc_port/path; WebHDFS listens on the namenode's HTTP port (9870 by default, or
`http_port`). Simple authentication sends `user` as user.name; a Kerberized cluster needs SPNEGO, which this
store does not do (say so rather than fail obscurely: a 401 names the setting).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import BinaryIO

from ml_platform.stores.base import FileInfo, StorageError, Store


class HdfsStore(Store):
    def __init__(self, root: str, http_port: int = 9870, user: str = "hdfs", timeout: float = 30):
        parsed = urllib.parse.urlparse(root)
        if parsed.scheme != "hdfs" or not parsed.hostname:
            raise StorageError(f"{root!r} is not an hdfs://namenode:port/path URI (ML_PLATFORM_DATA)")
        self.host, self.rpc_port = parsed.hostname, parsed.port or 8020
        self.base = "/" + parsed.path.strip("/")
        self.http = f"http://{self.host}:{http_port}/webhdfs/v1"
        self.user, self.timeout = user, timeout

    def path(self, rel: str) -> str:
        rel = rel.strip("/")
        if any(part == ".." for part in rel.split("/")):
            raise ValueError(f"path {rel!r} escapes the store root {self.base}")
        return f"{self.base.rstrip('/')}/{rel}" if rel else self.base

    def uri(self, rel: str) -> str:
        return f"hdfs://{self.host}:{self.rpc_port}{self.path(rel)}"

    # ---- WebHDFS
    def _url(self, rel: str, op: str, **params) -> str:
        q = urllib.parse.urlencode({"op": op, "user.name": self.user, **params})
        return f"{self.http}{urllib.parse.quote(self.path(rel))}?{q}"

    def _call(self, method: str, rel: str, op: str, data: bytes | None = None, **params):
        url = self._url(rel, op, **params)
        try:
            if data is not None:  # two steps: the namenode redirects the write to a datanode
                url = self._redirect(method, url)
            req = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/octet-stream"} if data is not None
                                         else {})
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise self._explain(e, rel, op) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise StorageError(f"HDFS {op} {self.uri(rel)}: cannot reach WebHDFS at {self.http} ({e}); check the "
                               f"namenode in ML_PLATFORM_DATA and ML_PLATFORM_HDFS_HTTP_PORT") from None

    def _redirect(self, method: str, url: str) -> str:
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **k):
                return None

        try:
            urllib.request.build_opener(NoRedirect).open(urllib.request.Request(url, method=method),
                                                         timeout=self.timeout)
        except urllib.error.HTTPError as e:
            if e.code in (307, 302) and e.headers.get("Location"):
                return e.headers["Location"]
            raise
        return url

    def _explain(self, e: urllib.error.HTTPError, rel: str, op: str) -> StorageError:
        try:
            remote = json.loads(e.read() or b"{}").get("RemoteException", {})
        except ValueError:
            remote = {}
        kind, message = remote.get("exception", ""), remote.get("message", str(e)).split("\n")[0]
        where = self.uri(rel)
        if kind == "FileAlreadyExistsException":
            return _Exists(message)
        if e.code in (401, 403) or kind in ("AccessControlException", "SecurityException"):
            return StorageError(f"HDFS {op} {where}: permission denied for user {self.user!r} ({message}); set "
                                f"ML_PLATFORM_HDFS_USER or the directory's owner/permissions")
        return StorageError(f"HDFS {op} {where}: {kind or e.code}: {message}")

    def _status(self, rel: str) -> dict | None:
        try:
            with self._call("GET", rel, "GETFILESTATUS") as r:
                return json.load(r)["FileStatus"]
        except StorageError as e:
            if "FileNotFoundException" in str(e):
                return None
            raise

    # ---- Store
    def list_files(self, rel_dir: str) -> list[FileInfo]:
        try:
            with self._call("GET", rel_dir, "LISTSTATUS") as r:
                entries = json.load(r)["FileStatuses"]["FileStatus"]
        except StorageError as e:
            if "FileNotFoundException" in str(e):
                return []
            raise
        # HDFS keeps the modification time; a rename does not change it, so a moved-in file keeps its write time
        return [FileInfo(s["pathSuffix"], s["length"], s["modificationTime"] * 1_000_000)
                for s in entries if s["type"] == "FILE"]

    def open_read(self, rel: str) -> BinaryIO:
        return self._call("GET", rel, "OPEN")

    def exists(self, rel: str) -> bool:
        return self._status(rel) is not None

    def move(self, src: str, dst: str) -> None:
        parent = dst.rstrip("/").rsplit("/", 1)[0] if "/" in dst.strip("/") else ""
        self._call("PUT", parent, "MKDIRS").close()
        with self._call("PUT", src, "RENAME", destination=self.path(dst)) as r:
            if not json.load(r).get("boolean"):
                raise StorageError(f"HDFS rename {self.uri(src)} -> {self.uri(dst)} refused (does the target exist?)")

    def write_text(self, rel: str, text: str) -> None:
        self._call("PUT", rel, "CREATE", data=text.encode("utf-8"), overwrite="true").close()

    def read_text(self, rel: str) -> str | None:
        try:
            with self.open_read(rel) as r:
                return r.read().decode("utf-8")
        except StorageError as e:
            if "FileNotFoundException" in str(e):
                return None
            raise

    def create_exclusive(self, rel: str, text: str) -> str | None:
        try:  # the namenode refuses to create a file that exists: atomic, like O_EXCL
            self._call("PUT", rel, "CREATE", data=text.encode("utf-8"), overwrite="false").close()
            return None
        except _Exists:
            return self.read_text(rel)

    def delete_tree(self, rel: str) -> None:
        self._call("DELETE", rel, "DELETE", recursive="true").close()


class _Exists(StorageError):
    pass
