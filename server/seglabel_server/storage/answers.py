"""Recent answers' crop embeddings (``types.Answer``), by request id, for Relabel and for
AddExamples(request_id): least recently used dropped past ``max_bytes`` (like the embedding cache).
With a shared upload store (Redis) each answer is also written there, expiring ``ttl_s`` after it
was made, so a Relabel routed to another replica finds it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections import OrderedDict

import numpy as np

from seglabel_server.storage.backing import redis_client
from seglabel_server.types import Answer

log = logging.getLogger(__name__)


class AnswerCache:
    def __init__(
        self, max_bytes: int, redis_url: str = "", ttl_s: int = 3600, prefix: str = "seglabel:answer:"
    ):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, Answer] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()
        self.ttl_s, self.prefix = ttl_s, prefix
        self.redis = None
        if redis_url and max_bytes > 0:  # errors are logged, not raised: the local copy still serves
            self.redis = redis_client(redis_url, timeout_s=5)

    @property
    def shared(self) -> bool:
        """Whether put / get may wait on the network (call them from a thread then)."""
        return self.redis is not None

    async def put_async(self, request_id: str, answer: Answer) -> None:
        if self.shared:
            await asyncio.to_thread(self.put, request_id, answer)
        else:
            self.put(request_id, answer)

    async def get_async(self, request_id: str) -> Answer | None:
        return await asyncio.to_thread(self.get, request_id) if self.shared else self.get(request_id)

    def put(self, request_id: str, answer: Answer) -> None:
        if answer.nbytes > self.max_bytes:
            return
        with self.lock:
            old = self.entries.pop(request_id, None)
            if old is not None:
                self.bytes -= old.nbytes
            self.entries[request_id] = answer
            self.bytes += answer.nbytes
            while self.bytes > self.max_bytes and self.entries:
                _, dropped = self.entries.popitem(last=False)
                self.bytes -= dropped.nbytes
        if self.redis is not None:
            try:
                self.redis.set(self.prefix + request_id, _pack(answer), ex=self.ttl_s)
            except Exception as exc:  # the local copy still serves this replica
                log.warning("answer %s not shared (%s: %s)", request_id, type(exc).__name__, exc)

    def get(self, request_id: str) -> Answer | None:
        with self.lock:
            answer = self.entries.get(request_id)
            if answer is not None:
                self.entries.move_to_end(request_id)
                return answer
        if self.redis is not None:
            try:
                data = self.redis.get(self.prefix + request_id)
            except Exception as exc:
                log.warning("answer store unreachable (%s: %s)", type(exc).__name__, exc)
                return None
            return _unpack(data) if data else None
        return None

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()


def _pack(a: Answer) -> bytes:
    meta = json.dumps(
        {"image_key": a.image_key, "rles": a.rles, "clip_model": a.clip_model, "chunks": a.chunks}
    )
    buf = io.BytesIO()
    np.savez(buf, embeddings=a.embeddings, meta=np.frombuffer(meta.encode(), np.uint8))
    return buf.getvalue()


def _unpack(data: bytes) -> Answer:
    with np.load(io.BytesIO(data)) as z:
        meta = json.loads(z["meta"].tobytes())
        return Answer(z["embeddings"], meta["image_key"], meta["rles"], meta["clip_model"], meta["chunks"])
