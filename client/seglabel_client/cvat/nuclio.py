"""The handler of a nuclio function for self-hosted CVAT's serverless models, a thin proxy to a
seglabel gRPC server (``SEGLABEL_SERVER``, and ``SEGLABEL_TOKEN`` when it has one). Its kind is
``SEGLABEL_FUNCTION``: ``detector`` (labels ``SEGLABEL_LABELS``, Segment options
``SEGLABEL_OPTIONS`` as JSON) (CVAT's "Automatic annotation": every mask with its label and
confidence, in CVAT's serverless mask format) or ``interactor`` (CVAT's AI tools: positive and
negative clicks and an optional box -> one mask). ``nuclio/<kind>/function.yaml`` deploys it:

    nuctl deploy --project-name cvat --path client/seglabel_client/cvat/nuclio/detector --platform local
"""

from __future__ import annotations

import base64
import json
import os

import numpy as np
from seglabel_api import options as declared
from seglabel_api.formats.cvat import mask_box

from seglabel_client.analysis import decode_mask
from seglabel_client.cvat import connect


def init_context(context) -> None:
    context.user_data.kind = os.environ.get("SEGLABEL_FUNCTION", "detector")
    context.user_data.client = connect(os.environ.get("SEGLABEL_SERVER", "127.0.0.1:50051"),
                                       os.environ.get("SEGLABEL_TOKEN", ""))  # fmt: skip
    labels = os.environ.get("SEGLABEL_LABELS", "")
    context.user_data.labels = [x.strip() for x in labels.split(",") if x.strip()]
    # any Segment option by its name, as JSON (e.g. {"points_per_side": 32, "min_confidence": 0.3})
    context.user_data.options = declared.from_kwargs(
        declared.SEGMENT, **json.loads(os.environ.get("SEGLABEL_OPTIONS") or "{}")
    )
    context.logger.info(f"seglabel {context.user_data.kind} -> {os.environ.get('SEGLABEL_SERVER')}")


def _reply(context, body, status: int = 200):
    return context.Response(
        body=json.dumps(body), headers={}, content_type="application/json", status_code=status
    )


def cvat_mask(mask: np.ndarray) -> list[int]:
    """CVAT's serverless mask: the box's pixels (0/1, row by row), then [left, top, right, bottom]."""
    box = mask_box(mask)
    if box is None:
        return []
    left, top, right, bottom = box
    return mask[top : bottom + 1, left : right + 1].astype(np.uint8).ravel().tolist() + [
        left,
        top,
        right,
        bottom,
    ]


def handler(context, event):
    data = event.body if isinstance(event.body, dict) else json.loads(event.body or b"{}")
    try:
        image = base64.b64decode(data["image"])
    except (KeyError, TypeError, ValueError):
        return _reply(context, {"error": "the body needs 'image' (base64)"}, 400)
    client, kind = context.user_data.client, context.user_data.kind
    try:
        if kind == "interactor":
            return _reply(context, interact(client, image, data))
        threshold = float(data.get("threshold") or 0.0)
        return _reply(
            context, detect(client, image, threshold, context.user_data.labels, context.user_data.options)
        )
    except Exception as exc:  # the gRPC status and message, as CVAT shows them
        context.logger.error(f"seglabel: {exc}")
        code = getattr(exc, "code", None)
        details = getattr(exc, "details", None)
        message = f"{code().name}: {details()}" if callable(code) and callable(details) else str(exc)
        return _reply(context, {"error": message}, 500)


def detect(client, image: bytes, threshold: float, labels: list[str], options=None) -> list[dict]:
    kw = {"labels": labels} if labels else {}
    resp = client.segment(image=image, options=options, prompt_type="grid", overlay=False, **kw)
    by_mask = {lab.mask_index: lab for lab in resp.labels}
    out = []
    for m in resp.masks:
        lab = by_mask.get(m.index)
        if lab is None or lab.label == "unknown" or lab.confidence < threshold:
            continue
        mask = decode_mask(m)
        if mask.any():
            out.append({"confidence": f"{lab.confidence:.6f}", "label": lab.label, "points": [], "type": "mask",
                        "mask": cvat_mask(mask)})  # fmt: skip
    return out


def interact(client, image: bytes, data: dict) -> dict:
    points = [(x, y, 1) for x, y in data.get("pos_points") or []] + [
        (x, y, 0) for x, y in data.get("neg_points") or []
    ]
    box = data.get("obj_bbox")
    # CVAT sends the box as [[x1, y1], [x2, y2]] (older builds: [x1, y1, x2, y2])
    kw = (
        {"prompt_type": "box", "boxes": [tuple(np.ravel(box).tolist())]} if box else {"prompt_type": "points"}
    )
    if not box and not points:
        return {"mask": []}
    resp = client.segment(image=image, points=points, skip_labels=True, overlay=False, **kw)
    if not resp.masks:
        return {"mask": []}
    best = max(resp.masks, key=lambda m: m.predicted_iou)
    return {"mask": decode_mask(best).astype(np.uint8).tolist()}
