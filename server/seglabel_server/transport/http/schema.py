"""The HTTP bodies' declared shapes (FastAPI validates them and lists them in /openapi.json), derived
from the request options' declaration (``seglabel_api.options``) and the proto: every option of a
scope by its proto name and JSON shape (enums by their short names, nested options in their
message), with its declared help and default. Built when the app is created, from the declaration
as it is then."""

from __future__ import annotations

import inspect
import typing
from typing import Any, Literal, cast

from fastapi import Depends
from pydantic import BaseModel, Field, create_model
from seglabel_api import options
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb


class PointIn(BaseModel):
    x: float
    y: float
    positive: bool = True  # a point without "positive" is a positive one


class BoxIn(BaseModel):
    x0: float
    y0: float
    x1: float
    y1: float


class TextOptionsIn(BaseModel):
    """ExtractText's options (unset: the server's defaults)."""

    box_thresh: float | None = None
    min_confidence: float | None = None


# The JSON shape of a message an option holds several of.
_MESSAGES: dict[str, type[BaseModel]] = {"Point": PointIn, "Box": BoxIn}


def _json_type(f, hint, fd) -> Any:
    if f.metadata["choices"]:
        return Literal[f.metadata["choices"]]
    if fd is not None and fd.message_type is not None and fd.message_type.name in _MESSAGES:
        return list[_MESSAGES[fd.message_type.name]]  # type: ignore[valid-type]
    if typing.get_origin(hint) is tuple:
        return list[typing.get_args(hint)[0]]  # type: ignore[misc]
    return hint


def _json_default(value):
    return list(value) if isinstance(value, tuple) else value


def options_model(name: str, scope: str, base: type[BaseModel] = BaseModel, defaults: dict | None = None,
                  extra: dict[str, tuple] | None = None) -> type[BaseModel]:  # fmt: skip
    """A model of the options of ``scope`` as a SegmentRequest's JSON carries them, over ``base``;
    ``defaults`` overrides declared defaults by option name, ``extra`` adds fields (pydantic's
    ``(type, default)``)."""
    hints = typing.get_type_hints(options.SegmentOptions)
    request = pb.SegmentRequest.DESCRIPTOR
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for f in options.declared(scope):
        *parents, leaf = options.proto_path(f).split(".")
        holder = request
        for p in parents:
            holder = holder.fields_by_name[p].message_type
        fd = holder.fields_by_name.get(leaf)
        value = (defaults or {}).get(f.name, options.default(f))
        spec = (_json_type(f, hints[f.name], fd), Field(_json_default(value), description=f.metadata["help"]))
        (nested.setdefault(parents[0], {}) if parents else top)[leaf] = spec
    for parent, inner in nested.items():
        message = request.fields_by_name[parent].message_type.name
        model = create_model(f"{name}{message}", **inner)
        top[parent] = (model, Field(default_factory=model))
    fields = cast(dict[str, Any], {**top, **(extra or {})})
    return create_model(name, __base__=base, **fields)


def body(model: type[BaseModel], optional: bool = False):
    """A route's JSON body of ``model`` (built at run time), as a dependency: the route's own
    parameter keeps a static type for the type checker, FastAPI validates and documents ``model``."""

    def read(body):
        return body

    default = None if optional else inspect.Parameter.empty
    param = inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                              annotation=model | None if optional else model)  # fmt: skip
    read.__signature__ = inspect.Signature([param])  # type: ignore[attr-defined]
    return Depends(read)
