"""seglabel inside CVAT, without a CVAT server (it runs as Docker services; none can run here):

- the detector through cvat-sdk's own auto-annotation driver (``annotate_task``: its label mapping,
  its validation of every shape, its upload call), with only what a server would answer stood in
  (the task's labels and frames, and the annotations upload, captured);
- the interactor through cvat-sdk's interaction interface (its prompt and result classes);
- the nuclio handler through nuclio's own SDK objects (``nuclio_sdk.Context`` / ``Event``).
Masks are decoded by cvat-sdk's own ``decode_mask`` and compared with seglabel's."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from seglabel_client import sample_image_bytes
from seglabel_client.analysis import decode_mask
from seglabel_client.client import AsyncSegmenterClient

cvataa = pytest.importorskip("cvat_sdk.auto_annotation", reason="cvat-sdk is not installed (make venv)")
from cvat_sdk import models  # noqa: E402
from cvat_sdk.auto_annotation import driver  # noqa: E402
from cvat_sdk.masks import decode_mask as cvat_decode  # noqa: E402

LOOSE = {
    "points_per_side": 4,
    "pred_iou_thresh": 0,
    "stability_score_thresh": 0,
    "box_nms_thresh": 1,
    "max_masks": 4,
}
PHOTOS = ["astronaut.jpg", "coffee.jpg"]


class Frames:
    """What ``TaskDataset`` reads from a CVAT server: the task's labels and its frames."""

    labels: list = []

    def __init__(self, client, task_id, load_annotations=False):
        self.samples = [
            SimpleNamespace(frame_index=i, frame_name=name,
                            media=SimpleNamespace(load_image=lambda name=name: Image.open(io.BytesIO(sample_image_bytes(name)))))
            for i, name in enumerate(PHOTOS)
        ]  # fmt: skip


def cvat_client(uploads: list):
    api = SimpleNamespace(partial_update_annotations=lambda action, task_id, patched_labeled_data_request: uploads.append(
        (action, task_id, patched_labeled_data_request)))  # fmt: skip
    return SimpleNamespace(logger=logging.getLogger("cvat"), tasks=SimpleNamespace(api=api))


async def reference(port: int, name: str, labels) -> list[tuple[str, np.ndarray, float]]:
    async with AsyncSegmenterClient(f"127.0.0.1:{port}", timeout=120) as c:
        r = await c.segment(image=sample_image_bytes(name), labels=labels, overlay=False, **LOOSE)
    by = {lab.mask_index: lab for lab in r.labels}
    return [(by[m.index].label, decode_mask(m), by[m.index].confidence) for m in r.masks]


async def test_the_detector_through_cvat_sdks_auto_annotation_driver(make_server, monkeypatch):
    from seglabel_client.cvat import detector

    server = await make_server()
    vocabulary = ["person", "rocket", "cup", "sky"]
    fn = await asyncio.to_thread(
        detector.create, server=f"127.0.0.1:{server.port}", labels=",".join(vocabulary), **LOOSE
    )
    # the task has three of the function's labels (ids of its own) and one more; "rocket" is not in it
    Frames.labels = [models.Label(name=n, id=100 + i, type="any", attributes=[], sublabels=[])
                     for i, n in enumerate(["cup", "person", "sky", "tree"])]  # fmt: skip
    monkeypatch.setattr(driver, "TaskDataset", lambda client, task_id, load_annotations=False: SimpleNamespace(
        labels=Frames.labels, samples=Frames(client, task_id).samples))  # fmt: skip
    uploads: list = []
    await asyncio.to_thread(driver.annotate_task, cvat_client(uploads), 7, fn, allow_unmatched_labels=True)
    ((action, task_id, data),) = uploads
    assert (action, task_id) == ("create", 7)
    ids = {lab.id: lab.name for lab in Frames.labels}
    for frame, name in enumerate(PHOTOS):
        want = [x for x in await reference(server.port, name, vocabulary) if x[0] != "rocket"]
        got = [s for s in data.shapes if s.frame == frame]
        assert len(got) == len(want) and got
        for s, (label, mask, confidence) in zip(got, want):
            assert s.type.value == "mask" and ids[s.label_id] == label and s.source == "auto"
            assert s.score == pytest.approx(confidence, abs=1e-6)
            h, w = mask.shape
            assert (cvat_decode(s.points, image_width=w, image_height=h) == mask).all()
    # polygons when CVAT asks for them; the confidence threshold is applied
    uploads.clear()
    await asyncio.to_thread(driver.annotate_task, cvat_client(uploads), 7, fn, allow_unmatched_labels=True,
                            conv_mask_to_poly=True, conf_threshold=0.0)  # fmt: skip
    shapes = uploads[0][2].shapes
    assert (
        shapes and {s.type.value for s in shapes} == {"polygon"} and all(len(s.points) >= 6 for s in shapes)
    )
    uploads.clear()
    await asyncio.to_thread(driver.annotate_task, cvat_client(uploads), 7, fn, allow_unmatched_labels=True,
                            conf_threshold=1.0)  # fmt: skip
    assert uploads[0][2].shapes == []
    # a label the task lacks is refused unless the team allows it (cvat-sdk's own check)
    with pytest.raises(cvataa.BadFunctionError):
        await asyncio.to_thread(driver.annotate_task, cvat_client([]), 7, fn)
    with pytest.raises(TypeError, match="unknown option"):
        detector.create(server=f"127.0.0.1:{server.port}", labels="a", grid_size=3)


class Prompts(cvataa.InteractionPrompts):
    def __init__(self, pos=(), neg=(), box=None):
        self._pos, self._neg, self._box = list(pos), list(neg), box

    pos_points = property(lambda self: self._pos)
    neg_points = property(lambda self: self._neg)
    bounding_box = property(lambda self: self._box)


async def test_the_interactor_answers_clicks_and_boxes_as_cvat_masks(make_server):
    from seglabel_client.cvat import interactor

    server = await make_server()
    fn = await asyncio.to_thread(interactor.create, server=f"127.0.0.1:{server.port}")
    assert isinstance(fn.spec, cvataa.InteractionFunctionSpec)
    image = Image.open(io.BytesIO(sample_image_bytes("astronaut.jpg")))
    file_id = await asyncio.to_thread(fn.preprocess_image, None, image)
    for prompts, kw in [
        (Prompts(pos=[(250.0, 200.0)], neg=[(20.0, 20.0)]), {"prompt_type": "points", "points": [(250, 200, 1), (20, 20, 0)]}),
        (Prompts(box=((100.0, 80.0), (400.0, 420.0))), {"prompt_type": "box", "boxes": [(100, 80, 400, 420)]}),
    ]:  # fmt: skip
        (shape,) = await asyncio.to_thread(fn.detect, None, file_id, prompts)
        assert isinstance(shape, cvataa.InteractionResultShape) and shape.type == "mask"
        async with AsyncSegmenterClient(f"127.0.0.1:{server.port}", timeout=120) as c:
            r = await c.segment(file_id=file_id, skip_labels=True, overlay=False, **kw)
        best = max(r.masks, key=lambda m: m.predicted_iou)
        assert (cvat_decode(shape.points, image_width=512, image_height=512) == decode_mask(best)).all()
        assert float(shape.attributes[0].value) == pytest.approx(best.predicted_iou, abs=1e-5)
    assert await asyncio.to_thread(fn.detect, None, file_id, Prompts()) == []


async def test_the_nuclio_handler_through_nuclios_own_objects(make_server, monkeypatch):
    nuclio_sdk = pytest.importorskip("nuclio_sdk", reason="nuclio-sdk is not installed (make venv)")
    from seglabel_client.cvat import nuclio

    server = await make_server()
    monkeypatch.setenv("SEGLABEL_SERVER", f"127.0.0.1:{server.port}")
    monkeypatch.setenv("SEGLABEL_LABELS", "person,rocket")
    monkeypatch.setenv("SEGLABEL_OPTIONS", json.dumps(LOOSE))
    image = base64.b64encode(sample_image_bytes("astronaut.jpg")).decode()

    def call(kind, body):
        monkeypatch.setenv("SEGLABEL_FUNCTION", kind)
        ctx = nuclio_sdk.Context(logger=nuclio_sdk.Logger(logging.DEBUG, "test"))
        nuclio.init_context(ctx)
        resp = nuclio.handler(ctx, nuclio_sdk.Event(body=body))
        return resp.status_code, json.loads(resp.body)

    code, shapes = await asyncio.to_thread(call, "detector", {"image": image, "threshold": 0.0})
    assert code == 200 and shapes and all(s["type"] == "mask" for s in shapes), shapes
    want = await reference(server.port, "astronaut.jpg", ["person", "rocket"])
    assert [s["label"] for s in shapes] == [x[0] for x in want]
    for s in shapes:  # CVAT's serverless mask: the box's bitmap, then the box
        left, top, right, bottom = s["mask"][-4:]
        assert (
            len(s["mask"]) == (right - left + 1) * (bottom - top + 1) + 4 and 0 <= float(s["confidence"]) <= 1
        )
    code, got = await asyncio.to_thread(
        call, "interactor", {"image": image, "pos_points": [[250, 200]], "neg_points": []}
    )
    assert code == 200 and np.asarray(got["mask"]).shape == (512, 512) and np.asarray(got["mask"]).any()
    code, got = await asyncio.to_thread(call, "interactor", {"image": image, "pos_points": [], "neg_points": [],
                                                             "obj_bbox": [[100, 80], [400, 420]]})  # fmt: skip
    assert code == 200 and np.asarray(got["mask"]).any()
    assert (await asyncio.to_thread(call, "detector", {"no": "image"}))[0] == 400
    code, got = await asyncio.to_thread(
        call, "detector", {"image": base64.b64encode(b"not an image").decode()}
    )
    assert code == 500 and got["error"].startswith("INVALID_ARGUMENT")
