"""Masks combined with the depth map and the text lines: small pure functions, and
:class:`SceneExtras`, which runs depth and OCR alongside a Segment request.

Depth is Depth Anything's relative inverse depth (larger is nearer), so "front to back" is by
descending median. A text line belongs to a mask when at least half of its box's pixels are mask
pixels.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import numpy as np
from PIL import Image, ImageDraw

from seglabel_server import amg
from seglabel_server.pipeline.cpu import CpuPool
from seglabel_server.types import DepthReady, MaskDepth, MaskText, TextReady

TEXT_INSIDE_FRACTION = 0.5


def mask_depth(index: int, mask: np.ndarray, depth: np.ndarray) -> MaskDepth:
    """Median / min / max of ``depth`` over the mask's pixels (rank set later)."""
    values = depth[mask]
    if values.size == 0:
        return MaskDepth(index, float("nan"), float("nan"), float("nan"))
    return MaskDepth(index, float(np.median(values)), float(values.min()), float(values.max()))


def rank_front_to_back(stats: list[MaskDepth]) -> None:
    """rank 0 = nearest (highest median inverse depth); ties keep mask order."""
    order = sorted(range(len(stats)), key=lambda i: (-stats[i].median, stats[i].mask_index))
    for rank, i in enumerate(order):
        stats[i].rank = rank


def box_pixels(box: list[tuple[float, float]], height: int, width: int) -> tuple[tuple[int, int], np.ndarray]:
    """The pixels of a 4-point box: ((y0, x0), bool [h, w]) over its bounding rectangle, clipped to
    the image (a pixel is in when PIL's polygon fill covers it)."""
    xs = [p[0] for p in box]
    ys = [p[1] for p in box]
    x0, y0 = max(0, int(np.floor(min(xs)))), max(0, int(np.floor(min(ys))))
    x1, y1 = min(width, int(np.ceil(max(xs))) + 1), min(height, int(np.ceil(max(ys))) + 1)
    if x1 <= x0 or y1 <= y0:
        return (y0, x0), np.zeros((0, 0), bool)
    canvas = Image.new("1", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(canvas).polygon([(x - x0, y - y0) for x, y in box], fill=1)
    return (y0, x0), np.asarray(canvas, dtype=bool)


def inside_fraction(mask: np.ndarray, origin: tuple[int, int], pixels: np.ndarray) -> float:
    """Share of the box's pixels that are mask pixels."""
    n = int(pixels.sum())
    if n == 0:
        return 0.0
    y0, x0 = origin
    h, w = pixels.shape
    return float((mask[y0 : y0 + h, x0 : x0 + w] & pixels).sum()) / n


def mask_text(
    index: int, mask: np.ndarray, boxes: list[tuple[tuple[int, int], np.ndarray]], lines
) -> MaskText:
    """The lines (indices) whose box lies mostly inside the mask, and their text."""
    inside = [
        i
        for i, (origin, pix) in enumerate(boxes)
        if inside_fraction(mask, origin, pix) >= TEXT_INSIDE_FRACTION
    ]
    return MaskText(index, inside, " ".join(lines[i].text for i in inside))


class SceneExtras:
    """A Segment request's depth and text: started alongside the masks, joined with each chunk of masks
    when their result is already there (the chunk's full-resolution masks are at hand), otherwise
    with the masks decoded again from their RLE at the end, so masks never wait for them. It is
    given what it needs: the image, the CPU pool and the request's timings."""

    def __init__(self, image: np.ndarray, pool: CpuPool, timings: dict):
        self.image, self.pool, self.timings = image, pool, timings
        self.h, self.w = image.shape[:2]
        self.depth_task: asyncio.Future | None = None
        self.text_task: asyncio.Future | None = None
        self.mask_depth: dict[int, MaskDepth] = {}
        self.mask_text: dict[int, MaskText] = {}
        self._boxes = None

    def start(self, depth: Awaitable | None, text: Awaitable | None) -> None:
        """Start the depth and OCR work given (called once the request's encoder call is queued:
        their model calls rank below the masks' and labels', and their CPU work starts after the
        encoder's input)."""
        if depth is not None:
            self.depth_task = asyncio.ensure_future(self._timed("depth", depth))
        if text is not None:
            self.text_task = asyncio.ensure_future(self._timed("text", text))

    async def _timed(self, name: str, work: Awaitable):
        t0 = time.perf_counter()
        try:
            return await work
        finally:
            self.timings[name] = (time.perf_counter() - t0) * 1000.0

    @staticmethod
    def _ready(task) -> bool:
        return task is not None and task.done() and not task.cancelled() and task.exception() is None

    def _text_boxes(self, text) -> list:
        if self._boxes is None:
            self._boxes = [box_pixels(line.box, self.h, self.w) for line in text.lines]
        return self._boxes

    def _annotate(self, indices: list[int], masks: list[np.ndarray], depth, text, check) -> None:
        for i, m in zip(indices, masks):
            check()
            if depth is not None and i not in self.mask_depth:
                self.mask_depth[i] = mask_depth(i, m, depth.values)
            if text is not None and i not in self.mask_text:
                self.mask_text[i] = mask_text(i, m, self._text_boxes(text), text.lines)

    async def add_chunk(self, results, full: list[np.ndarray], ctx) -> None:
        depth = self.depth_task.result() if self._ready(self.depth_task) else None
        text = self.text_task.result() if self._ready(self.text_task) else None
        if (depth is not None or text is not None) and results:
            idx = [r.index for r in results]
            await self.pool.run(self._annotate, idx, full, depth, text, ctx.check)

    async def finish(self, masks, send, ctx) -> tuple:
        """Wait for depth and text, annotate the masks not done yet (decoded from RLE), rank, and
        send the events. Returns (depth, mask_depth, text, mask_text)."""
        depth = await self.depth_task if self.depth_task else None
        text = await self.text_task if self.text_task else None
        todo = [r for r in masks if (depth is not None and r.index not in self.mask_depth)
                or (text is not None and r.index not in self.mask_text)]  # fmt: skip

        def rest() -> None:
            for r in todo:
                self._annotate([r.index], [amg.decode_rle(r.rle)], depth, text, ctx.check)

        if todo:
            await self.pool.run(rest)
        per_depth = [self.mask_depth[r.index] for r in masks] if depth is not None else []
        per_text = [self.mask_text[r.index] for r in masks] if text is not None else []
        rank_front_to_back(per_depth)
        if depth is not None:
            await send(DepthReady(depth, per_depth))
        if text is not None:
            await send(TextReady(text, per_text))
        return depth, per_depth, text, per_text

    async def cancel(self) -> None:
        """On any exit: no task left running or with an unread exception."""
        tasks = [t for t in (self.depth_task, self.text_task) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
