"""Where uploads live between ``Upload`` and the requests that name their ``file_id``.

A file_id is the sha256 of the bytes (content-addressed: the same image uploaded twice, or to two
replicas, is one entry). Three stores, chosen by ``--upload-store``:

    memory            in this process, least recently used dropped past --upload-cache-mb (default)
    disk:/some/dir    files on a local disk: survives restarts, atomic writes (rename), least recently
                      used (by access time, touched on read) dropped past --upload-cache-mb; several
                      processes on one machine may share the folder
    redis://host:port/db   Redis: shared by every replica; each entry expires --upload-ttl-s after its
                      last use; the byte bound is Redis's own (maxmemory + allkeys-lru, as make redis sets)

Calls block (disk, network): the service calls them from worker threads, never on its event loop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

from seglabel_server.errors import InvalidArgument, UnknownFile, clip_text
from seglabel_server.storage.backing import RedisBacked, store_kind, write_atomically

log = logging.getLogger(__name__)


def file_id_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_FILE_ID = re.compile(r"[0-9a-f]{64}")


def check_file_id(file_id: str) -> None:
    """An upload id is a sha256 in lowercase hex; anything else is refused before any lookup."""
    if not _FILE_ID.fullmatch(file_id):
        raise InvalidArgument(
            f"file_id must be 64 lowercase hex characters (a sha256), got {clip_text(file_id)}"
        )


def unknown(file_id: str) -> UnknownFile:
    return UnknownFile(f"unknown file_id {clip_text(file_id, 80)} (never uploaded, or evicted: upload again)")


class UploadStore:
    """``put(bytes, filename) -> file_id``, ``get(file_id) -> bytes`` (UnknownFile when absent),
    ``filename(file_id)``; ``describe()`` for logs and GetServerInfo."""

    shared = False  # whether other processes (replicas) see the same uploads

    def put(self, data: bytes, filename: str = "") -> str:
        raise NotImplementedError

    def get(self, file_id: str) -> bytes:
        raise NotImplementedError

    def filename(self, file_id: str) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class MemoryStore(UploadStore):
    """In this process; least recently used dropped past ``max_bytes`` (the newest always kept)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.files: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self.total = 0
        self.lock = threading.Lock()

    def put(self, data: bytes, filename: str = "") -> str:
        file_id = file_id_of(data)
        with self.lock:
            if file_id in self.files:
                self.files[file_id] = (data, filename or self.files[file_id][1])
                self.files.move_to_end(file_id)
                return file_id
            self.files[file_id] = (data, filename)
            self.total += len(data)
            while self.total > self.max_bytes and len(self.files) > 1:
                _, (old, _) = self.files.popitem(last=False)
                self.total -= len(old)
        return file_id

    def get(self, file_id: str) -> bytes:
        with self.lock:
            entry = self.files.get(file_id)
            if entry is None:
                raise unknown(file_id)
            self.files.move_to_end(file_id)
            return entry[0]

    def filename(self, file_id: str) -> str:
        with self.lock:
            entry = self.files.get(file_id)
            return entry[1] if entry else ""

    def describe(self) -> str:
        return f"memory (up to {self.max_bytes >> 20} MiB)"


class DiskStore(UploadStore):
    """``root/ab/<sha256>`` with the file name beside it in ``<sha256>.name``. A write goes to a
    temporary file in the same folder and is renamed into place, so a reader (another process, or
    this one after a crash) sees a whole file or none. Past ``max_bytes`` the least recently used
    (access time, set on every read) are removed; the total is re-read from the folder at start."""

    def __init__(self, root: str | os.PathLike, max_bytes: int):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.total = sum(p.stat().st_size for p in self._blobs())

    def _path(self, file_id: str) -> Path:
        return self.root / file_id[:2] / file_id

    def _blobs(self):
        return (p for p in self.root.glob("??/*") if len(p.name) == 64)

    def put(self, data: bytes, filename: str = "") -> str:
        file_id = file_id_of(data)
        path = self._path(file_id)
        path.parent.mkdir(exist_ok=True)
        with self.lock:
            if path.exists():
                os.utime(path)
            else:
                write_atomically(path, data)
                self.total += len(data)
            if filename:
                write_atomically(path.with_name(file_id + ".name"), filename.encode())
            self._evict(keep=path)
        return file_id

    def _evict(self, keep: Path) -> None:
        if self.total <= self.max_bytes:
            return
        entries = []
        for p in self._blobs():
            with _quiet():
                st = p.stat()
                entries.append((max(st.st_atime, st.st_mtime), st.st_size, p))
        self.total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if self.total <= self.max_bytes:
                break
            if p == keep:
                continue
            with _quiet():
                p.unlink()
                self.total -= size
            with _quiet():
                p.with_name(p.name + ".name").unlink()

    def get(self, file_id: str) -> bytes:
        path = self._path(file_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise unknown(file_id) from None
        with _quiet():
            now = time.time()
            os.utime(path, (now, now))  # recently used, whatever the filesystem's atime policy
        return data

    def filename(self, file_id: str) -> str:
        try:
            return self._path(file_id).with_name(file_id + ".name").read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            return ""

    def describe(self) -> str:
        return f"disk {self.root} (up to {self.max_bytes >> 20} MiB)"


class RedisStore(RedisBacked, UploadStore):
    """One hash per upload, ``<prefix><sha256>`` -> {data, filename}, expiring ``ttl_s`` after its
    last use (refreshed on read). Every replica pointed at the same Redis sees the same uploads."""

    shared = True
    what = "upload store"

    def __init__(self, url: str, ttl_s: int, prefix: str = "seglabel:upload:"):
        self._connect(url)
        self.ttl_s, self.prefix = ttl_s, prefix

    def put(self, data: bytes, filename: str = "") -> str:
        file_id = file_id_of(data)
        key = self.prefix + file_id
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={"data": data, **({"filename": filename} if filename else {})})
        pipe.expire(key, self.ttl_s)
        self._call(pipe.execute)
        return file_id

    def get(self, file_id: str) -> bytes:
        key = self.prefix + file_id
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(key, "data")
        pipe.expire(key, self.ttl_s)
        data, _ = self._call(pipe.execute)
        if data is None:
            raise unknown(file_id)
        return data

    def filename(self, file_id: str) -> str:
        name = self._call(self.client.hget, self.prefix + file_id, "filename")
        return name.decode() if name else ""

    def describe(self) -> str:
        return f"redis {self.url} (entries expire {self.ttl_s}s after last use)"


class _quiet:
    """``with _quiet():`` ignores a file that another process removed or renamed meanwhile."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, OSError)


def open_store(spec: str, max_bytes: int, ttl_s: int) -> UploadStore:
    """``memory``, ``disk:PATH`` or ``redis://host:port/db`` (``rediss://`` for TLS)."""
    kind, where = store_kind(spec, "--upload-store")
    if kind == "memory":
        return MemoryStore(max_bytes)
    if kind == "disk":
        return DiskStore(where, max_bytes)
    return RedisStore(where, ttl_s)
