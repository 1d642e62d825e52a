"""The HTTP JSON is derived from the protobuf mapping: every field of the messages appears under its
proto name, with only the original routes' quirks changed; a request body parses into the same
domain parameters as the equivalent gRPC request."""

from __future__ import annotations

import base64

import numpy as np
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb
from seglabel_server.pipeline.ocr import TextLine
from seglabel_server.transport.grpc import convert
from seglabel_server.transport.http import json as wire
from seglabel_server.types import DepthResult, Done, LabelResult, MaskResult, SegmentResult, TextResult


def result() -> SegmentResult:
    mask = MaskResult(0, {"size": [4, 6], "counts": "abc"}, (1.0, 2.0, 3.0, 4.0), 12, 0.9, 0.95, (2.5, 3.5))
    depth = DepthResult(np.zeros((4, 6), np.uint16), np.zeros((4, 6), np.float32), 0.0, 1.0, b"PNG")
    text = TextResult([TextLine("hi", 0.9, [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)])])
    return SegmentResult(6, 4, [mask], [LabelResult(0, "cat", 0.8, [("cat", 0.8)])], b"OVERLAY",
                         {"total": 5.0}, depth=depth, text=text)  # fmt: skip


def test_every_field_by_its_proto_name_with_the_routes_quirks():
    out = wire.message_json(convert.result_to_pb(result()))
    assert set(out) == {f.name for f in pb.SegmentResponse.DESCRIPTOR.fields}
    assert out["segmented_image"] == "data:image/png;base64," + base64.b64encode(b"OVERLAY").decode()
    (mask,) = out["masks"]
    assert set(mask) == {f.name for f in pb.Mask.DESCRIPTOR.fields} and mask["point"] == [2.5, 3.5]
    assert mask["rle"] == {"size": [4, 6], "counts": "abc"} and mask["area"] == 12
    assert out["labels"][0] == {"label": "cat", "confidence": 0.8, "mask_index": 0, "labels": [],
                                "top_k": [{"label": "cat", "confidence": 0.8, "threshold": 0.0}]}  # fmt: skip
    assert out["timings"]["total_ms"] == 5.0 and set(out["timings"]) == {
        f.name for f in pb.Timings.DESCRIPTOR.fields
    }
    d = out["depth"]
    assert d["depth_image"].startswith("data:image/png;base64,") and "colorized_png" not in d
    assert len(base64.b64decode(d["data"])) == 4 * 6 * 2 and "encoding" in d
    assert out["text"] == {"text": "hi", "lines": [{"text": "hi", "confidence": 0.9,
                                                     "box": [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]}]}  # fmt: skip


def test_a_body_parses_as_the_grpc_request_does():
    image = b"\x89PNG..."
    body = {"image": "data:image/png;base64," + base64.b64encode(image).decode(), "prompt_type": "points",
            "points": [{"x": 1, "y": 2, "positive": False}], "min_confidence": None, "top_k": 2,
            "text_options": {"box_thresh": 0.4, "min_confidence": None}}  # fmt: skip
    req = wire.segment_request(body)
    assert req.image == image and req.return_overlay  # the HTTP default
    grpc_req = pb.SegmentRequest(image=image, prompt_type=pb.PROMPT_TYPE_POINTS,
                                 points=[pb.Point(x=1, y=2, positive=False)], top_k=2, return_overlay=True,
                                 text_options=pb.TextOptions(box_thresh=0.4))  # fmt: skip
    assert convert.params_from_pb(req) == convert.params_from_pb(grpc_req)


def test_a_stream_event_is_its_oneof_case():
    name, payload = wire.event_json(Done(result()))
    assert name == "summary" and payload["masks"] == [] and payload["mask_count"] == 1
