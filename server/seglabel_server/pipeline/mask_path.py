"""Where a request's per-mask work runs, bound once when the pipeline is built: the encoder's input,
the candidate filter's logits, upsampling and RLE, the CLIP crops. :class:`HostMaskPath` does it
with numpy and Pillow over the CPU pool; :class:`DeviceMaskPath` with the torch backend's kernels
in its memory (``Backend.device_ops``: the GPU, or CPU torch), where full-size masks never reach
the host (the overlay and the depth/text joins decode the answers' RLE instead). The two are tested
equal (tests/pipeline/test_device_path.py); the pipeline calls one :class:`MaskPath`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from seglabel_server import amg
from seglabel_server.amg import MaskData
from seglabel_server.backends.base import DeviceMaskOps, LogitOps
from seglabel_server.models import images
from seglabel_server.models.kinds.sam2 import DecoderOutput
from seglabel_server.pipeline import masks
from seglabel_server.pipeline.cpu import CpuPool
from seglabel_server.pipeline.parts import RequestState
from seglabel_server.types import MaskResult, RequestContext, SegmentOptions


@dataclass(frozen=True)
class CropSpec:
    """How a mask is cut for CLIP (``images.clip_crop``): CLIP's input size and normalisation, the
    context around the mask's box and how much background stays."""

    size: int
    mean: tuple
    std: tuple
    context: float
    background_keep: float

    @classmethod
    def of(cls, clip: dict, cfg) -> CropSpec:
        """The crops of the repository's CLIP section ``clip``, with ``cfg``'s (PipelineConfig) context."""
        return cls(clip["image_size"], clip["mean"], clip["std"], cfg.crop_context, cfg.crop_background_keep)

    def cut(self, image, mask, box_xywh, out: np.ndarray | None = None) -> np.ndarray:
        """One region's CLIP input, [3,S,S] (written into ``out`` when given)."""
        return images.clip_crop(image, mask, box_xywh, self.size, self.mean, self.std, self.context,
                                self.background_keep, out)  # fmt: skip


class MaskPath(Protocol):
    """A request's per-mask work. Full masks are whatever the path keeps them as (host arrays, or
    tensors in a backend's memory); only :meth:`host_masks` and :meth:`overlay_masks` hand them out."""

    name: str
    logits: LogitOps  # what the grid's candidate filter does with the decoder's low-res logits

    async def encoder_input(self, req: RequestState) -> Any:
        """The SAM2 encoder's input of the request's image."""

    async def prompted(self, p: SegmentOptions, outs: list[DecoderOutput]) -> MaskData:
        """Point / box prompts' masks (``masks.prompted``)."""

    async def finish(self, cand: MaskData, hw, ctx: RequestContext) -> tuple[list[MaskResult], Any]:
        """Survivors upsampled to the image, empty ones dropped: (MaskResults without index: RLE,
        exact box, area; their full masks)."""

    async def crops(self, req: RequestState, chunk: list[MaskResult], full, ctx: RequestContext) -> Any:
        """[K,3,S,S] CLIP inputs of a chunk of masks."""

    def host_masks(self, full) -> list[np.ndarray]:
        """A chunk's full masks as host arrays for the depth/text joins and the overlay; [] where
        they stay on the device (those decode the answers' RLE)."""

    async def overlay_masks(self, answer: list[MaskResult], kept: list[np.ndarray]) -> list[np.ndarray]:
        """The answer's full masks on the host for the overlay, given what :meth:`host_masks` gave."""


class HostMaskPath:
    """numpy and Pillow on the CPU pool: per-mask work split over its threads."""

    name = "host"
    logits: LogitOps = masks.HOST

    def __init__(self, sam: dict, pool: CpuPool, crop: CropSpec | None, upsample_on_backend=None):
        self.sam, self.pool, self.crop = sam, pool, crop
        self.finisher = masks.MaskFinisher(sam, upsample_on_backend)

    async def encoder_input(self, req: RequestState) -> np.ndarray:
        s = self.sam
        return await self.pool.run(
            images.sam_preprocess, req.image, s["image_size"], s["pixel_mean"], s["pixel_std"]
        )

    async def prompted(self, p: SegmentOptions, outs: list[DecoderOutput]) -> MaskData:
        return await self.pool.run(masks.prompted, p, outs, self.sam)

    async def finish(self, cand: MaskData, hw, ctx: RequestContext) -> tuple[list[MaskResult], list]:
        full_masks = await self.pool.run(self.finisher.upsample, cand, hw)
        parts = await self.pool.parallel(
            lambda r: self.finisher.describe(cand, r, full_masks, hw, ctx), len(cand)
        )
        pairs = [pair for part in parts for pair in part]
        return [r for r, _ in pairs], [m for _, m in pairs]

    def cut(
        self, image: np.ndarray | images.CropSource, chunk: list[MaskResult], full: list,
        ctx: RequestContext | None = None, out: np.ndarray | None = None,
    ) -> np.ndarray:  # fmt: skip
        """The crops of ``chunk`` on this thread (``full``: their full masks, arrays or
        ``rle.RunMask``), written into ``out`` [len(chunk),3,S,S] when given; stops between masks
        once ``ctx`` is done."""
        s = self.crop.size
        out = np.empty((len(chunk), 3, s, s), np.float32) if out is None else out
        for i, (m, m_full) in enumerate(zip(chunk, full)):
            if ctx is not None:
                ctx.check()
            self.crop.cut(image, m_full, m.bbox, out[i])
        return out

    async def crops(
        self, req: RequestState, chunk: list[MaskResult], full: list, ctx: RequestContext
    ) -> np.ndarray:
        if req.crop_source is None:  # the image's reductions, shared by the request's crops
            req.crop_source = images.CropSource(req.image)
        source, s = req.crop_source, self.crop.size
        out = np.empty((len(chunk), 3, s, s), np.float32)  # each thread writes its masks' rows
        await self.pool.parallel(
            lambda r: self.cut(
                source, chunk[r.start : r.stop], full[r.start : r.stop], ctx, out[r.start : r.stop]
            ),
            len(chunk),
        )
        return out

    def host_masks(self, full: list) -> list[np.ndarray]:
        # masks held as runs (rle.RunMask) are not made whole here: the joins and the overlay,
        # when asked for, decode the answers' RLE
        return full if all(isinstance(m, np.ndarray) for m in full) else []

    async def overlay_masks(self, answer: list[MaskResult], kept: list[np.ndarray]) -> list[np.ndarray]:
        if len(kept) == len(answer):
            return kept
        return await self.pool.run(lambda: [amg.decode_rle(m.rle) for m in answer])


class DeviceMaskPath:
    """The backend's kernels (:class:`DeviceMaskOps`), each step one batched call on a pool thread;
    the image is uploaded once per request (for the encoder's input and the crops)."""

    name = "device"

    def __init__(self, sam: dict, pool: CpuPool, crop: CropSpec | None, ops: DeviceMaskOps):
        self.sam, self.pool, self.crop, self.ops = sam, pool, crop, ops
        self.logits: LogitOps = ops

    async def _image(self, req: RequestState):
        if req.image_dev is None:
            req.image_dev = await self.pool.run(self.ops.upload, req.image)
        return req.image_dev

    async def encoder_input(self, req: RequestState):
        s = self.sam
        image = await self._image(req)
        return await self.pool.run(
            self.ops.sam_preprocess, image, s["image_size"], s["pixel_mean"], s["pixel_std"]
        )

    async def prompted(self, p: SegmentOptions, outs: list[DecoderOutput]) -> MaskData:
        return await self.pool.run(self.ops.prompted, p, outs, self.sam)

    async def finish(self, cand: MaskData, hw, ctx: RequestContext):
        ctx.check()
        return await self.pool.run(self.ops.finish, cand, hw, self.sam["mask_threshold"])

    async def crops(self, req: RequestState, chunk: list[MaskResult], full, ctx: RequestContext):
        c, image = self.crop, await self._image(req)
        boxes = [m.bbox for m in chunk]
        return await self.pool.run(
            self.ops.crops, image, full, boxes, c.size, c.mean, c.std, c.context, c.background_keep
        )

    def host_masks(self, full) -> list[np.ndarray]:
        return []

    async def overlay_masks(self, answer: list[MaskResult], kept: list[np.ndarray]) -> list[np.ndarray]:
        return await self.pool.run(lambda: [amg.decode_rle(m.rle) for m in answer])


def mask_path(sam: dict, pool: CpuPool, crop: CropSpec | None, device_ops: DeviceMaskOps | None,
              upsample_on_backend=None) -> MaskPath:  # fmt: skip
    """The path a pipeline runs, chosen once: the backend's kernels where it offers them."""
    if device_ops is not None:
        return DeviceMaskPath(sam, pool, crop, device_ops)
    return HostMaskPath(sam, pool, crop, upsample_on_backend)
