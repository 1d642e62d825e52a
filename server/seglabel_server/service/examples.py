"""Examples as CLIP embeddings: an example's region (a box or a mask of an upload, or a mask of a
kept answer) checked, cut and embedded, with the source it is stored with."""

from __future__ import annotations

import numpy as np

from seglabel_server import amg
from seglabel_server.errors import FailedPrecondition, InvalidArgument, NotFound, clip_text
from seglabel_server.service.image_source import ImageSource
from seglabel_server.service.lifecycle import Lifecycle
from seglabel_server.types import ExampleIn, RequestContext


async def embed_examples(examples: list[ExampleIn], ctx: RequestContext, lifecycle: Lifecycle, images: ImageSource,
                     clip_model: str) -> list[tuple[np.ndarray, dict]]:  # fmt: skip
    """(embedding, source) per example, in order; every example checked before any CLIP run.
    Images are decoded once per file_id, under the memory budget."""
    answers, pipeline = lifecycle.answers, lifecycle.loaded.pipeline
    out: list = [None] * len(examples)
    by_file: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        where = f"example {i + 1}"
        if ex.request_id:
            answer = await answers.get_async(ex.request_id) if answers is not None else None
            if answer is None:
                raise NotFound(
                    f"{where}: no answer {clip_text(ex.request_id)} kept here (expired from the answer "
                    "cache, or never labelled): segment again, or give file_id and mask"
                )
            if answer.clip_model != clip_model:
                raise FailedPrecondition(
                    f"{where}: answer {ex.request_id} was labelled by another CLIP model"
                )
            if not 0 <= ex.mask_index < len(answer.embeddings):
                raise InvalidArgument(
                    f"{where}: mask_index {ex.mask_index} is not a mask of answer {ex.request_id} "
                    f"({len(answer.embeddings)} masks)"
                )
            source = {"file_id": answer.image_key, "mask": answer.rles[ex.mask_index]}
            out[i] = (answer.embeddings[ex.mask_index].copy(), source)
        elif ex.file_id:
            by_file.setdefault(ex.file_id, []).append(i)
        else:
            raise InvalidArgument(f"{where}: give file_id (with an optional box or mask) or request_id")
    for file_id, idx in by_file.items():
        try:
            image = await images.read(file_id)
        except InvalidArgument as exc:
            raise InvalidArgument(f"example {idx[0] + 1}: {exc}") from None
        regions = [_region(examples[i], image.shape[1], image.shape[0], f"example {i + 1}") for i in idx]
        ctx.check()
        emb = await pipeline.embed_regions(image, [r[:2] for r in regions], ctx)
        for i, e, r in zip(idx, emb, regions):
            out[i] = (e / np.linalg.norm(e), r[2])
    for ex, got in zip(examples, out):
        if ex.origin:
            got[1]["origin"] = ex.origin
    return out


def _region(ex: ExampleIn, w: int, h: int, where: str) -> tuple[np.ndarray | None, tuple, dict]:
    """(full-size mask, (x, y, w, h) box, source) of an image example; InvalidArgument when its box
    or mask is empty or not inside the image."""
    if ex.box is not None and ex.mask is not None:
        raise InvalidArgument(f"{where}: give a box or a mask, not both")
    if ex.box is not None:
        x0, y0, x1, y1 = ex.box
        if not (x1 > x0 and y1 > y0):
            raise InvalidArgument(f"{where}: box ({x0}, {y0}, {x1}, {y1}) is empty (x1 > x0 and y1 > y0)")
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise InvalidArgument(f"{where}: box ({x0}, {y0}, {x1}, {y1}) is outside the {w}x{h} image")
        mask = np.zeros((h, w), bool)
        mask[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
        return mask, (x0, y0, x1 - x0, y1 - y0), {"file_id": ex.file_id, "box": [x0, y0, x1, y1]}
    if ex.mask is not None:
        size = list(ex.mask.get("size", []))
        if size != [h, w]:
            raise InvalidArgument(f"{where}: mask size {size} is not the image's [{h}, {w}]")
        try:
            mask = amg.decode_rle(ex.mask)
        except Exception as exc:
            raise InvalidArgument(f"{where}: mask is not a valid COCO RLE ({exc})") from None
        if not mask.any():
            raise InvalidArgument(f"{where}: mask is empty")
        x0, y0, x1, y1 = amg.masks_to_boxes(mask[None])[0]
        box = (float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1))
        return mask, box, {"file_id": ex.file_id, "mask": {"size": size, "counts": ex.mask["counts"]}}
    return np.ones((h, w), bool), (0.0, 0.0, float(w), float(h)), {"file_id": ex.file_id}
