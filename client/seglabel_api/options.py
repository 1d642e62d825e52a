"""Every option of a Segment request, declared once: :class:`SegmentOptions`.

Each field says what it means (``help``), which commands take it (``scopes``), how it is named
where the name differs (the command line's ``flag``, a client keyword ``alias``, the ``proto`` path
of a nested field), whether the server's configuration fills it when it is unset
(``server_default``: the ``PipelineConfig`` setting of the same name) and whether it is a fraction
(``unit``: within [0, 1]). Everything else is derived from the declaration:

- the protobuf mapping, by the proto's own field names and types (:func:`to_pb`, :func:`from_pb`);
- the client's keyword arguments (:func:`from_kwargs`);
- every command's flags (``seglabel_api.flags``): ``seglabel segment``, ``label``, ``relabel``,
  ``seglabel-bench``, ``seglabel-ray label``;
- the server's parameters (the server runs this very class; :func:`with_defaults` fills it);
- the HTTP JSON models (``seglabel_server.transport.http.schema``) and a dataset job's stored
  options (``seglabel_api.datasets.job.LabelOptions``).

Why a dataclass and not the proto message: the proto is the wire contract (a new option is also a
field there, the one other edit it needs), but help texts, scopes, flags and server defaults have
no place in a message, and a dataclass is what the server computes with. A test holds the two
together (every SegmentRequest field but the image is declared here, and nothing else is).

Derivations read the declaration when they run, through this module (``options.SegmentOptions``),
so a field added here is everywhere at once.
"""

from __future__ import annotations

import argparse
import functools
import typing
from collections.abc import Iterable
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any

SEGMENT = "segment"  # Segment / StreamSegment, the HTTP /segment body, seglabel segment
DATASET = "dataset"  # a dataset job: grid prompts, one answer per image written as annotations
RELABEL = "relabel"  # Relabel: a kept answer's masks scored again
BENCH = "bench"  # seglabel-bench: the load it sends


def option(default: Any, help: str, *, scopes: Iterable[str], flag: str = "", alias: str = "",
           proto: str = "", choices: tuple[str, ...] = (), unit: bool = False, server_default: bool = False,
           parse=None, metavar: str | None = None, cli: bool = True, append: bool = False):  # fmt: skip
    """A declared option (see the module's doc for each key)."""
    meta = dict(help=help, scopes=frozenset(scopes), flag=flag, alias=alias, proto=proto, choices=choices,
                unit=unit, server_default=server_default, parse=parse, metavar=metavar, cli=cli, append=append)  # fmt: skip
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata=meta, **kw)


# -- how the command line writes the structured options ------------------------------------------
def parse_csv(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _numbers(text: str, counts: tuple[int, ...]) -> list[tuple[float, ...]]:
    out = []
    for chunk in filter(None, (c.strip() for c in text.split(";"))):
        try:
            vals = tuple(float(v) for v in chunk.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{chunk!r}: expected numbers separated by ','") from None
        if len(vals) not in counts:
            raise argparse.ArgumentTypeError(f"{chunk!r}: expected {' or '.join(map(str, counts))} numbers")
        out.append(vals)
    return out


def parse_points(text: str) -> tuple[tuple[float, float, int], ...]:
    """'x,y[,positive];...' -> (x, y, 1 or 0) each (positive unless the third number is 0)."""
    return tuple((v[0], v[1], int(v[2] != 0) if len(v) > 2 else 1) for v in _numbers(text, (2, 3)))


def parse_boxes(text: str) -> tuple[tuple[float, float, float, float], ...]:
    """'x0,y0,x1,y1;...' in pixels."""
    return tuple((v[0], v[1], v[2], v[3]) for v in _numbers(text, (4,)))


def parse_threshold(text: str) -> tuple[str, float]:
    label, sep, value = text.rpartition("=")
    try:
        if sep and label:
            return label, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=VALUE")


# -- the declaration -------------------------------------------------------------------------------
# Which commands take an option: a grid's (every command that sends a Segment), the labelling ones.
_GRID = {SEGMENT, DATASET, BENCH}
_LABELS = {SEGMENT, DATASET, RELABEL}
_EXTRAS = {SEGMENT, DATASET}


@dataclass
class SegmentOptions:
    """What a client asks of one image. Zero, empty or None is "the server's default"; the server
    fills those once (:func:`with_defaults`) and runs exactly the result."""

    # -- prompts
    prompt_type: str = option(
        "grid", "how masks are prompted: a grid over the image, points or boxes",
        scopes={SEGMENT}, flag="prompt", choices=("grid", "points", "box"))  # fmt: skip
    points_per_side: int = option(
        0, "GRID: points per side of the prompt grid (0: the server's default)",
        scopes=_GRID, flag="grid", server_default=True)  # fmt: skip
    points: tuple[tuple[float, float, int], ...] = option(
        (), "POINTS (and a BOX's refinement): points in pixels, positive unless the third number is 0",
        scopes={SEGMENT}, parse=parse_points, metavar="'x,y[,positive];...'")  # fmt: skip
    boxes: tuple[tuple[float, float, float, float], ...] = option(
        (), "BOX: one mask per box (x0, y0, x1, y1 in pixels)",
        scopes={SEGMENT}, parse=parse_boxes, metavar="'x0,y0,x1,y1;...'")  # fmt: skip
    multimask: bool = option(
        False, "POINTS/BOX: each prompt's three candidate masks instead of one",
        scopes={SEGMENT})  # fmt: skip
    # -- filters
    max_masks: int = option(
        0, "keep at most this many masks, the best first (0: the server's default)",
        scopes=_GRID, server_default=True)  # fmt: skip
    pred_iou_thresh: float | None = option(
        None, "GRID: keep masks whose predicted IoU is above this (0: off; unset: the server's)",
        scopes=_GRID, unit=True, server_default=True)  # fmt: skip
    stability_score_thresh: float | None = option(
        None, "GRID: keep masks at least this stable (0: off; unset: the server's)",
        scopes=_GRID, unit=True, server_default=True)  # fmt: skip
    box_nms_thresh: float | None = option(
        None, "GRID: box NMS IoU threshold (1: keep every box; unset: the server's)",
        scopes=_GRID, unit=True, server_default=True)  # fmt: skip
    # -- labels
    vocabulary: tuple[str, ...] = option(
        (), "labels to classify against, comma-separated (empty: the server's default); a dataset's categories",
        scopes=_LABELS, flag="labels", alias="labels", parse=parse_csv, metavar="a,b,c")  # fmt: skip
    vocabulary_name: str = option(
        "", "a stored vocabulary (seglabel vocab) to label with, instead of a list",
        scopes=_LABELS)  # fmt: skip
    label_mode: str = option(
        "single", "single: one softmax label per mask; multi: every label at or above its threshold",
        scopes={SEGMENT, RELABEL}, choices=("single", "multi"))  # fmt: skip
    thresholds: dict[str, float] = option(
        dict, "multi: a label's threshold for this request, over the vocabulary's (repeatable)",
        scopes={SEGMENT, RELABEL}, flag="threshold", parse=parse_threshold, metavar="LABEL=VALUE", append=True)  # fmt: skip
    top_k: int = option(
        0, "alternative labels per mask (0: the server's default)",
        scopes=_LABELS, server_default=True)  # fmt: skip
    min_confidence: float | None = option(
        None, "labels under this confidence are 'unknown' (a dataset job leaves such masks out; unset: 0)",
        scopes=_LABELS, unit=True)  # fmt: skip
    skip_labels: bool = option(
        False, "masks only, no CLIP labels (a dataset's one category: 'object')",
        scopes=_EXTRAS, flag="no-labels")  # fmt: skip
    # -- scheduling
    priority: str | None = option(
        None, "the scheduler's class: interactive, default or batch (unset: interactive for points and "
        "boxes, default for a grid; dataset jobs: batch)",
        scopes={SEGMENT, DATASET}, choices=("interactive", "default", "batch"))  # fmt: skip
    job: str = option(
        "", "the fair-share key: requests of one job take turns with other jobs' of their class "
        "(empty: the caller's connection)",
        scopes={SEGMENT})  # fmt: skip
    # -- the answer
    return_overlay: bool = option(
        False, "render the overlay PNG of the masks and their labels",
        scopes={SEGMENT}, alias="overlay", cli=False)  # fmt: skip
    with_depth: bool = option(
        False, "also depth: the depth map and each mask's depth, front to back",
        scopes=_EXTRAS)  # fmt: skip
    with_text: bool = option(
        False, "also OCR: the text lines and the text on each mask",
        scopes=_EXTRAS)  # fmt: skip
    text_box_thresh: float | None = option(
        None, "with text: keep a detected text box whose mean probability is at least this (unset: the server's)",
        scopes=_EXTRAS, proto="text_options.box_thresh", unit=True, server_default=True)  # fmt: skip
    text_min_confidence: float | None = option(
        None, "with text: keep a line recognised with at least this confidence (unset: the server's)",
        scopes=_EXTRAS, proto="text_options.min_confidence", unit=True, server_default=True)  # fmt: skip


# -- reading the declaration -----------------------------------------------------------------------
def declared(scope: str | None = None) -> list[Field]:
    """The declared options (of ``scope``: those its command takes), in declaration order."""
    return [f for f in fields(SegmentOptions) if scope is None or scope in f.metadata["scopes"]]


def proto_path(f: Field) -> str:
    return f.metadata["proto"] or f.name


def default(f: Field):
    return f.default_factory() if callable(f.default_factory) else f.default


def is_unset(f: Field, value) -> bool:
    """Whether ``value`` asks for the server's default: None for an optional number, else zero or
    empty."""
    return value is None or (not value and default(f) is not None)


def with_defaults(opts: SegmentOptions, settings) -> SegmentOptions:
    """``opts`` with every unset ``server_default`` option taken from ``settings`` (an object with
    an attribute of each such option's name: the server's ``PipelineConfig``)."""
    filled = {f.name: getattr(settings, f.name) for f in declared()
              if f.metadata["server_default"] and is_unset(f, getattr(opts, f.name))}  # fmt: skip
    return replace(opts, **filled)


def server_defaults(settings) -> dict[str, Any]:
    """The value ``settings`` gives each ``server_default`` option (GetServerInfo.defaults)."""
    return {f.name: getattr(settings, f.name) for f in declared() if f.metadata["server_default"]}


def out_of_range(opts: SegmentOptions) -> list[tuple[str, float]]:
    """(name, value) of every fraction (``unit``) set outside [0, 1] (NaN included)."""
    return [(f.name, v) for f in declared() if f.metadata["unit"] and (v := getattr(opts, f.name)) is not None
            and not 0.0 <= v <= 1.0]  # fmt: skip


# -- the client's keyword arguments ------------------------------------------------------------------
def from_kwargs(scope: str = SEGMENT, base: SegmentOptions | None = None, **kw) -> SegmentOptions:
    """Options from keyword arguments named as declared (or by their ``alias``: ``labels``,
    ``overlay``), over ``base``; an unknown or out-of-scope keyword is a TypeError naming the known
    ones."""
    names = {}
    for f in declared(scope):
        names[f.name] = f.name
        if f.metadata["alias"]:
            names[f.metadata["alias"]] = f.name
    unknown = sorted(set(kw) - set(names))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; the options are: {', '.join(names)}")
    by_name = {f.name: f for f in declared(scope)}
    values = {names[key]: coerce(by_name[names[key]], value) for key, value in kw.items()}
    return replace(base or SegmentOptions(), **values)


def coerce(f: Field, value):
    """A keyword's value as the declared type: sequences as tuples, mappings as dicts."""
    origin = typing.get_origin(hints()[f.name])
    if origin is tuple and value is not None:
        return tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in value)
    if origin is dict:
        return dict(value or {})
    return value


def hints() -> dict[str, Any]:
    """The declared options' types (evaluated once per declaration: every request reads them)."""
    return _hints_of(SegmentOptions)


@functools.cache
def _hints_of(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# -- protobuf ------------------------------------------------------------------------------------------
# Messages an option holds several of, as plain tuples: (x, y, 1 positive / 0 negative) and boxes.
def _fill_point(m, p) -> None:
    m.x, m.y, m.positive = p[0], p[1], bool(p[2]) if len(p) > 2 else True


def _fill_box(m, b) -> None:
    m.x0, m.y0, m.x1, m.y1 = b


_MESSAGES = {
    "Point": (_fill_point, lambda m: (m.x, m.y, 1 if m.positive else 0)),
    "Box": (_fill_box, lambda m: (m.x0, m.y0, m.x1, m.y1)),
}


def _place(message, f: Field):
    """(the message that holds option ``f``, its field's name there)."""
    *parents, name = proto_path(f).split(".")
    for p in parents:
        message = getattr(message, p)
    return message, name


def _enum_prefix(enum) -> str:
    return enum.values[0].name.removesuffix("UNSPECIFIED")  # PROMPT_TYPE_UNSPECIFIED -> PROMPT_TYPE_


def enum_number(enum, value: str) -> int:
    """An enum option's short name ("points") as the proto enum's number (PROMPT_TYPE_POINTS)."""
    prefix = _enum_prefix(enum)
    v = enum.values_by_name.get(prefix + value.upper()) if isinstance(value, str) else None
    if v is None or v.number == 0:
        names = [x.name.removeprefix(prefix).lower() for x in enum.values if x.number]
        raise ValueError(f"{enum.name} must be one of {', '.join(names)}, got {value!r}")
    return v.number


def to_pb(opts: SegmentOptions, message, scope: str | None = None):
    """``opts`` (those of ``scope``) written into ``message`` (a SegmentRequest, or a RelabelRequest
    with RELABEL) by the proto's field names; None leaves a field unset. Returns ``message``."""
    for f in declared(scope):
        value = getattr(opts, f.name)
        if value is None:
            continue
        msg, name = _place(message, f)
        fd = msg.DESCRIPTOR.fields_by_name[name]
        if fd.enum_type is not None:
            setattr(msg, name, enum_number(fd.enum_type, value))
        elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            getattr(msg, name).update(value)
        elif fd.message_type is not None:
            fill, _ = _MESSAGES[fd.message_type.name]
            for item in value:
                fill(getattr(msg, name).add(), item)
        elif fd.is_repeated:
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    return message


def from_pb(message, scope: str | None = None) -> SegmentOptions:
    """The options ``message`` carries (those of ``scope``); a field the message leaves unset (an
    optional number, an unspecified enum) keeps its declared default. ValueError for an enum
    number the proto does not define."""
    values = {}
    for f in declared(scope):
        msg, name = _place(message, f)
        fd = msg.DESCRIPTOR.fields_by_name[name]
        if fd.has_presence and fd.message_type is None and not msg.HasField(name):
            continue
        raw = getattr(msg, name)
        if fd.enum_type is not None:
            if raw == 0:
                continue
            v = fd.enum_type.values_by_number.get(raw)
            if v is None:
                raise ValueError(f"unknown {name} {raw}")
            values[f.name] = v.name.removeprefix(_enum_prefix(fd.enum_type)).lower()
        elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            values[f.name] = dict(raw)
        elif fd.message_type is not None:
            _, read = _MESSAGES[fd.message_type.name]
            values[f.name] = tuple(read(m) for m in raw)
        elif fd.is_repeated:
            values[f.name] = tuple(raw)
        else:
            values[f.name] = raw
    return SegmentOptions(**values)
