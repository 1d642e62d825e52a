"""What the stores share: the ``--upload-store`` / ``--vocabulary-store`` spec, files written whole,
and Redis calls that answer UNAVAILABLE when Redis cannot be reached."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from seglabel_server.errors import InvalidArgument, Unavailable

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def store_kind(spec: str, flag: str) -> tuple[str, str]:
    """("memory", ""), ("disk", path) or ("redis", url) for a store spec; InvalidArgument otherwise."""
    if spec in ("", "memory"):
        return "memory", ""
    if spec.startswith("disk:"):
        path = spec[len("disk:") :]
        if not path:
            raise InvalidArgument(f"{flag} disk:PATH needs a folder")
        return "disk", path
    if spec.startswith(REDIS_SCHEMES):
        return "redis", spec
    raise InvalidArgument(f"{flag} must be memory, disk:PATH or redis://host:port/db, got {spec!r}")


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` in ``path`` whole or not at all: a temporary file in the same folder, synced, then
    renamed into place (a reader, another process, or this one after a crash sees old or new)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def redis_client(url: str, timeout_s: float = 10):
    import redis  # the optional dependency: pip install 'seglabel[cluster]'

    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=5)


class RedisBacked:
    """A store on Redis: ``self.client``, and ``_call`` that turns an unreachable Redis into
    UNAVAILABLE naming ``what`` (the caller retries later)."""

    what = "store"

    def _connect(self, url: str) -> None:
        import redis

        self.url, self.redis = url, redis
        self.client = redis_client(url)
        self.errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except self.errors as exc:
            raise Unavailable(
                f"{self.what} {self.url} unreachable ({type(exc).__name__}): retry later"
            ) from exc

    def close(self) -> None:
        self.client.close()
