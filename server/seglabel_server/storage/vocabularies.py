"""Where named vocabularies live: the same choices as uploads (``--vocabulary-store``, by default
``--upload-store``'s), keyed by name, each record one JSON document (``vocabulary.Vocabulary``).

    memory            in this process (lost on restart)
    disk:/some/dir    <dir>/vocabularies/<name>.json, written whole (temporary file + rename) under
                      an exclusive lock (flock) held for the read-modify-write: processes sharing
                      the folder lose no update
    redis://...       one hash per vocabulary (record, revision), updated in optimistic
                      transactions (WATCH / MULTI, retried on conflict): replicas share them. No
                      expiry: make redis evicts only keys that have one (uploads).

Every change goes through :meth:`VocabularyStore.update` (or ``create``), which applies a function
to the current record atomically: concurrent writers never lose each other's changes, and a
function that raises writes nothing. ``version(name)`` is cheap (no record read), so a caller can
keep a parsed copy and re-read only when it changed. Calls block: the service runs them in threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from seglabel_server.errors import AlreadyExists, NotFound, Unavailable, clip_text
from seglabel_server.storage.backing import RedisBacked, store_kind, write_atomically

log = logging.getLogger(__name__)

Update = Callable[[bytes | None], bytes]  # current record (None: absent) -> new record


def unknown(name: str) -> NotFound:
    return NotFound(f"unknown vocabulary {clip_text(name, 80)} (ListVocabularies lists them)")


class VocabularyStore:
    """Records are opaque bytes here (the service parses them)."""

    def get(self, name: str) -> tuple[object, bytes] | None:
        """(version, record) or None."""
        raise NotImplementedError

    def version(self, name: str) -> object | None:
        raise NotImplementedError

    def update(self, name: str, fn: Update, create: bool = False) -> bytes:
        """``fn(current)`` written atomically; NotFound when absent (unless ``create``)."""
        raise NotImplementedError

    def delete(self, name: str) -> bool:
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def create(self, name: str, record: bytes, replace: bool = False) -> bytes:
        def put(current: bytes | None) -> bytes:
            if current is not None and not replace:
                raise AlreadyExists(
                    f"vocabulary {clip_text(name, 80)} exists (replace it, or add examples to it)"
                )
            return record

        return self.update(name, put, create=True)


class MemoryVocabularies(VocabularyStore):
    def __init__(self) -> None:
        self.records: dict[str, tuple[int, bytes]] = {}
        self.counter = 0
        self.lock = threading.Lock()

    def get(self, name):
        with self.lock:
            return self.records.get(name)

    def version(self, name):
        with self.lock:
            entry = self.records.get(name)
            return entry[0] if entry else None

    def update(self, name, fn, create=False):
        with self.lock:
            entry = self.records.get(name)
            if entry is None and not create:
                raise unknown(name)
            record = fn(entry[1] if entry else None)
            self.counter += 1
            self.records[name] = (self.counter, record)
            return record

    def delete(self, name):
        with self.lock:
            return self.records.pop(name, None) is not None

    def names(self):
        with self.lock:
            return sorted(self.records)

    def describe(self) -> str:
        return "memory"


class DiskVocabularies(VocabularyStore):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root) / "vocabularies"
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.root / ".lock"
        self.thread_lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    @contextlib.contextmanager
    def _locked(self):
        """This process's threads, then other processes (flock on one lock file)."""
        with self.thread_lock, open(self.lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @staticmethod
    def _stat(path: Path):
        st = path.stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def get(self, name):
        path = self._path(name)
        try:
            with open(path, "rb") as f:  # one open file: version and bytes of the same write
                st = os.fstat(f.fileno())
                return (st.st_ino, st.st_mtime_ns, st.st_size), f.read()
        except FileNotFoundError:
            return None

    def version(self, name):
        try:
            return self._stat(self._path(name))
        except FileNotFoundError:
            return None

    def update(self, name, fn, create=False):
        path = self._path(name)
        with self._locked():
            try:
                current = path.read_bytes()
            except FileNotFoundError:
                if not create:
                    raise unknown(name) from None
                current = None
            record = fn(current)
            write_atomically(path, record)
            return record

    def delete(self, name):
        with self._locked():
            try:
                self._path(name).unlink()
                return True
            except FileNotFoundError:
                return False

    def names(self):
        return sorted(p.stem for p in self.root.glob("*.json"))

    def describe(self) -> str:
        return f"disk {self.root}"


class RedisVocabularies(RedisBacked, VocabularyStore):
    ATTEMPTS = 50  # optimistic transactions retried on conflict (many writers to one vocabulary)
    what = "vocabulary store"

    def __init__(self, url: str, prefix: str = "seglabel:vocab:"):
        self._connect(url)
        self.prefix = prefix

    # A version is (revision, creation token): a vocabulary deleted and created again starts its
    # revisions over, and must not look like the one a replica parsed before.
    def get(self, name):
        rev, created, record = self._call(
            self.client.hmget, self.prefix + name, "revision", "created", "record"
        )
        return None if record is None else ((int(rev), created), record)

    def version(self, name):
        rev, created = self._call(self.client.hmget, self.prefix + name, "revision", "created")
        return None if rev is None else (int(rev), created)

    def update(self, name, fn, create=False):
        key = self.prefix + name
        for _ in range(self.ATTEMPTS):
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    self._call(pipe.watch, key)
                    current = pipe.hget(key, "record")
                    if current is None and not create:
                        raise unknown(name)
                    record = fn(current)
                    pipe.multi()
                    pipe.hset(key, "record", record)
                    pipe.hincrby(key, "revision", 1)
                    if current is None:
                        pipe.hset(key, "created", uuid.uuid4().hex)
                    self._call(pipe.execute)
                    return record
                except self.redis.exceptions.WatchError:
                    continue  # another writer got there first: read again
        raise Unavailable(f"vocabulary {clip_text(name, 80)}: too many concurrent writers; retry")

    def delete(self, name):
        return bool(self._call(self.client.delete, self.prefix + name))

    def names(self):
        keys = self._call(lambda: list(self.client.scan_iter(match=self.prefix + "*", count=500)))
        return sorted(k.decode()[len(self.prefix) :] for k in keys)

    def describe(self) -> str:
        return f"redis {self.url}"


def open_vocabularies(spec: str) -> VocabularyStore:
    """``memory``, ``disk:PATH`` or ``redis://...`` (the upload store's spec by default)."""
    kind, where = store_kind(spec, "--vocabulary-store")
    if kind == "memory":
        return MemoryVocabularies()
    if kind == "disk":
        return DiskVocabularies(where)
    return RedisVocabularies(where)
