"""HTTP JSON, derived from the protobuf mapping (``transport/grpc/convert.py``): a request body is
parsed into the gRPC request message and converted by the same function as a gRPC call; an answer is
converted to its protobuf message and written field by field from the message's descriptor. The
proto is the one place that names each field. What differs is kept here, as the original
application's routes promise it:

- images are data URLs (``segmented_image``; a depth map's ``colorized_png`` as ``depth_image``);
- a mask's ``point`` is ``[x, y]`` (or null), a text line's ``box`` is ``[[x, y], ...]``;
- a text result's full text is ``text``;
- a request's enums are their short names (``prompt_type`` ``"grid" | "points" | "box"``,
  ``label_mode`` ``"single" | "multi"``; the proto's names are accepted too) and ``image`` may be
  a data URL;
- ``return_overlay`` defaults to true.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from seglabel_api import options
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb

from seglabel_server.errors import InvalidArgument
from seglabel_server.transport.grpc import convert

DEPTH_ENCODING = (
    "uint16 little-endian, row-major; value = min + q * ((max - min) / 65535); "
    "relative inverse depth (larger is nearer)"
)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else ""


def _scalar(field: FieldDescriptor, value):
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return float(str(np.float32(value)))  # the shortest decimal of the float32, as json_format
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    return value


def message_json(msg: Message) -> dict:
    """Every field of ``msg`` by its proto name (unset messages as null, int64 as numbers), with the
    quirks above applied to the message types that have them."""
    out: dict = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.is_repeated:
            item = (
                message_json
                if field.type == FieldDescriptor.TYPE_MESSAGE
                else (lambda v, f=field: _scalar(f, v))
            )
            out[field.name] = [item(v) for v in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            out[field.name] = message_json(value) if msg.HasField(field.name) else None
        else:
            out[field.name] = _scalar(field, value)
    quirk = QUIRKS.get(msg.DESCRIPTOR.full_name)
    return quirk(msg, out) if quirk else out


def _segment_response(msg: pb.SegmentResponse, out: dict) -> dict:
    out["segmented_image"] = data_url(msg.segmented_image)
    return out


def _mask(msg: pb.Mask, out: dict) -> dict:
    out["point"] = [out["point"]["x"], out["point"]["y"]] if msg.HasField("point") else None
    return out


def _depth_map(msg: pb.DepthMap, out: dict) -> dict:
    del out["colorized_png"]
    out["depth_image"] = data_url(msg.colorized_png)
    out["encoding"] = DEPTH_ENCODING
    return out


def _text_result(msg: pb.TextResult, out: dict) -> dict:
    out["text"] = out.pop("full_text")
    for line in out["lines"]:
        line["box"] = [[v["x"], v["y"]] for v in line["box"]]
    return out


QUIRKS: dict[str, Callable[[Message, dict], dict]] = {
    "seglabel.v1.SegmentResponse": _segment_response,
    "seglabel.v1.Mask": _mask,
    "seglabel.v1.DepthMap": _depth_map,
    "seglabel.v1.TextResult": _text_result,
}


def event_json(ev) -> tuple[str, dict]:
    """A domain event as (SSE event name, JSON): the ``SegmentEvent`` case and its message."""
    msg = convert.event_to_pb(ev)
    name = msg.WhichOneof("event")
    return name, message_json(getattr(msg, name))


def flat(msg: Message, inner: str) -> dict:
    """``msg`` as JSON with the fields of its message field ``inner`` at the top (the original
    routes' shape for depth and text)."""
    out = message_json(msg)
    return {**out.pop(inner), **out}


def _enums(body: dict, message) -> dict:
    """``body`` with each enum field given by its short name ("points", "multi") as the proto's
    number (PROMPT_TYPE_POINTS), which json_format reads as well as a name."""
    out = dict(body)
    for name, value in body.items():
        fd = message.DESCRIPTOR.fields_by_name.get(name)
        if fd is not None and fd.enum_type is not None and isinstance(value, str) and value.islower():
            try:
                out[name] = options.enum_number(fd.enum_type, value)
            except ValueError as exc:
                raise InvalidArgument(f"malformed request: {exc}") from None
    return out


def segment_request(body: dict) -> pb.SegmentRequest:
    """A ``/segment`` body (already validated against its declared shape) as the gRPC request."""
    body = {k: v for k, v in body.items() if v is not None}
    image = body.pop("image", None)
    body.setdefault("return_overlay", True)
    req = parse(body, pb.SegmentRequest())
    if image is not None:
        try:
            req.image = base64.b64decode(image.split(",", 1)[-1], validate=True)
        except ValueError as exc:
            raise InvalidArgument("image must be base64 (optionally a data: URL)") from exc
    return req


def parse(body, message):
    """A JSON body as the gRPC request ``message`` (a new instance of its class); an enum may be
    given by its short name ("multi"), a vocabulary's ``labels`` as plain names."""
    if not isinstance(body, dict):
        raise InvalidArgument("the body must be a JSON object")
    body = _enums({k: v for k, v in body.items() if v is not None}, message)
    if isinstance(message, pb.CreateVocabularyRequest) and isinstance(body.get("labels"), list):
        body["labels"] = [{"name": lab} if isinstance(lab, str) else lab for lab in body["labels"]]
    try:
        return json_format.ParseDict(body, message)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"malformed request: {exc}") from None


def text_options(body: dict | None) -> pb.TextOptions:
    try:
        return json_format.ParseDict(
            {k: v for k, v in (body or {}).items() if v is not None}, pb.TextOptions()
        )
    except json_format.ParseError as exc:
        raise InvalidArgument(f"malformed options: {exc}") from None
