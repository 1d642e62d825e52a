"""The job's progress on disk: one JSON line per finished image, appended, flushed and fsynced
as it finishes, after a header line naming the job. A run killed at any instant leaves at most
one torn last line, which the next run cuts off before it appends."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

VERSION = 1


class JobMismatch(ValueError):
    pass


class Journal:
    """``records``: sha -> (ok, byte offset of the latest record for it, width, height)."""

    def __init__(self, path: Path, job: dict, restart: bool = False, canonical=None):
        """``canonical``: how a job written by an earlier version is read before it is compared
        (``job.canonical_job``: defaults left out, renamed keys); ``job`` is in that form."""
        self.path = Path(path)
        self.job = job
        self.canonical = canonical or (lambda j: j)
        self.records: dict[str, tuple[bool, int, int, int]] = {}
        self.retry: set[str] = set()  # failures worth another try on the next run
        self.resumed = 0
        if restart or not self.path.exists():
            self._start()
        else:
            self._load()
        self.f = open(self.path, "ab")
        self.lock = threading.Lock()  # appends may come from several threads

    def _start(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(json.dumps({"seglabel_journal": VERSION, "job": self.job}).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _load(self) -> None:
        good = 0
        with open(self.path, "rb") as f:
            first = f.readline()
            try:
                header = json.loads(first)
            except ValueError:
                header = None
            if not first.endswith(b"\n") or not isinstance(header, dict) or "job" not in header:
                f.close()
                self._start()  # killed while the header was written: nothing was done yet
                return
            theirs = self.canonical(header["job"]) if isinstance(header["job"], dict) else {}
            if header.get("seglabel_journal") != VERSION or theirs != self.job:
                diff = sorted(k for k in set(theirs) | set(self.job) if theirs.get(k) != self.job.get(k))
                raise JobMismatch(
                    f"{self.path.parent} holds the journal of another job (it differs in: {', '.join(diff)}); "
                    "pass --restart to start over there, or choose another --out"
                )
            good = f.tell()
            while True:
                offset = f.tell()
                line = f.readline()
                if not line.endswith(b"\n"):
                    break  # end, or a line torn by a kill
                try:
                    rec = json.loads(line)
                except ValueError:
                    break
                self._index(rec, offset)
                good = f.tell()
        if good < self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(good)
        self.resumed = len(self.records)

    def _index(self, rec: dict, offset: int) -> None:
        sha = rec["sha"]
        self.records[sha] = (bool(rec["ok"]), offset, rec.get("width", 0), rec.get("height", 0))
        if not rec["ok"] and rec.get("retry"):
            self.retry.add(sha)
        else:
            self.retry.discard(sha)

    def pending(self, sha: str) -> bool:
        return sha not in self.records or sha in self.retry

    def append(self, rec: dict) -> None:
        line = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
        with self.lock:
            offset = self.f.tell()
            self.f.write(line)
            self.f.flush()
            os.fsync(self.f.fileno())
            self._index(rec, offset)

    def read(self, shas: Iterable[str]) -> Iterator[dict]:
        """The latest record of each of ``shas`` (journalled ones), in that order: one open file,
        a seek each, nothing kept."""
        with open(self.path, "rb") as f:
            for sha in shas:
                f.seek(self.records[sha][1])
                yield json.loads(f.readline())

    def close(self) -> None:
        self.f.close()
