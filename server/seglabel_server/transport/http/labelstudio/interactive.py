"""Interactive pre-annotation: the keypoints (positive / negative) and the rectangle an annotator
draws in Label Studio (the ``context`` of a ``/predict``) as point and box prompts on the task's
image, answered from the image's cached embedding: one mask, in the tag the config has for it."""

from __future__ import annotations

import asyncio

from seglabel_api.datasets.annotations import outline
from seglabel_api.formats import labelstudio as ls

from seglabel_server import amg
from seglabel_server.errors import InvalidArgument
from seglabel_server.transport.http.labelstudio.tasks import task_ref
from seglabel_server.types import SegmentOptions


def prompts(context: dict) -> tuple[list, list, str, str]:
    """(points [(x, y, positive)], boxes [(x0, y0, x1, y1)], label, image tag) in pixels."""
    points, boxes, label, to_name = [], [], "", ""
    for r in context.get("result") or []:
        if not isinstance(r, dict):
            raise InvalidArgument("context.result holds a region that is not an object")
        kind, v = r.get("type"), r.get("value") or {}
        w, h = float(r.get("original_width") or 0), float(r.get("original_height") or 0)
        if kind not in ("keypointlabels", "rectanglelabels"):
            continue
        if w <= 0 or h <= 0:
            raise InvalidArgument("a context region has no original_width / original_height")
        try:
            x, y = float(v["x"]) * w / 100, float(v["y"]) * h / 100
            if kind == "keypointlabels":
                points.append((x, y, 0 if r.get("is_positive") is False or r.get("is_positive") == 0 else 1))
            else:
                boxes.append((x, y, x + float(v["width"]) * w / 100, y + float(v["height"]) * h / 100))
        except (KeyError, TypeError, ValueError):
            raise InvalidArgument(f"a {kind} context region without its x, y (width, height)") from None
        label = ls.region_label(r) or label
        to_name = r.get("to_name") or to_name
    if not points and not boxes:
        raise InvalidArgument("the context has no keypoint or rectangle to prompt with")
    return points, boxes[-1:], label, to_name


async def interactive(backend, project, config: ls.LabelingConfig, tasks: list, context: dict) -> dict:
    if len(tasks) != 1:
        raise InvalidArgument(f"an interactive prediction is for one task, got {len(tasks)}")
    points, boxes, label, to_name = prompts(context)
    control = config.mask_output(to_name) if to_name else config.output
    if control is None:
        raise InvalidArgument(f"the labeling config has no brush, polygon or rectangle tag over {to_name!r}")
    task_id, ref = task_ref(tasks[0], control)
    opts = SegmentOptions(
        prompt_type="box" if boxes else "points", points=tuple(points), boxes=tuple(boxes),
        skip_labels=True, return_overlay=False,
    )  # fmt: skip
    result = await backend._segment(project, ref, task_id, opts)
    if not result.masks:
        return {"result": [], "score": 0.0}
    m = max(result.masks, key=lambda m: m.predicted_iou)
    name = label if label in control.labels else control.labels[0]

    def region() -> list[dict]:
        mask = amg.decode_rle(m.rle)
        polys = outline(mask) if control.type == "polygonlabels" else None
        return ls.regions(control, mask, m.bbox, name, float(m.predicted_iou), ls.region_id(), polys)

    return {"result": await asyncio.to_thread(region), "score": round(float(m.predicted_iou), 6)}
