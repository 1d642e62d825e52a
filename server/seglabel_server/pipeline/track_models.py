"""How the tracking loop's model calls are made (``TrackSession``'s ``TrackModels``): through the
scheduler's stages when served, so that frames and objects of concurrent sessions share batches
(``ScheduledTrackModels``), or on a backend directly in tools, tests and benchmarks
(``DirectTrackModels``); the kinds (``models/kinds/video.py``) turn the items into each graph's
inputs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from seglabel_server.models.kinds import sam2, video
from seglabel_server.models.kinds.video import ConditionRequest, MemoryRequest, TrackDecodeRequest


class TrackModels(Protocol):
    """The video path's model calls: the frame's encoder outputs (opaque to the session) and the
    three video kinds' items (``models/kinds/video.py``)."""

    async def encode(self, pixels: np.ndarray) -> Any: ...

    async def condition(self, req: ConditionRequest) -> np.ndarray: ...

    async def decode(self, req: TrackDecodeRequest) -> Sequence[np.ndarray]: ...

    async def encode_memory(self, req: MemoryRequest) -> np.ndarray: ...


class DirectTrackModels:
    """The kinds executed on a backend directly, no scheduler: tools, tests, benchmarks."""

    def __init__(self, backend):
        self.backend = backend

    async def encode(self, pixels: np.ndarray):
        return sam2.ENCODER.execute(self.backend, [pixels[0]])[0]

    async def condition(self, req: ConditionRequest) -> np.ndarray:
        return video.CONDITIONER.execute(self.backend, [req])[0]

    async def decode(self, req: TrackDecodeRequest):
        return video.TRACK_DECODER.execute(self.backend, [req])[0]

    async def encode_memory(self, req: MemoryRequest) -> np.ndarray:
        return video.MEMORY_ENCODER.execute(self.backend, [req])[0]


class ScheduledTrackModels:
    """The kinds as the scheduler's stages: frames and objects of concurrent sessions share
    batches. ``times``: ms spent waiting on each (encoder, memory, decoder), summed until cleared."""

    def __init__(self, scheduler, ctx):
        self.scheduler, self.ctx = scheduler, ctx
        self.times: dict[str, float] = {}

    async def _run(self, stage: str, payload, key: str):
        t0 = time.perf_counter()
        try:
            return await self.scheduler.run(stage, payload, self.ctx)
        finally:
            self.times[key] = self.times.get(key, 0.0) + (time.perf_counter() - t0) * 1e3

    async def encode(self, pixels: np.ndarray):
        return await self._run(sam2.ENCODER.name, pixels[0], "encoder")

    async def condition(self, req: ConditionRequest) -> np.ndarray:
        return await self._run(video.CONDITIONER.name, req, "memory")

    async def decode(self, req: TrackDecodeRequest):
        return await self._run(video.TRACK_DECODER.name, req, "decoder")

    async def encode_memory(self, req: MemoryRequest) -> np.ndarray:
        return await self._run(video.MEMORY_ENCODER.name, req, "memory")
