"""A request's parameters checked against the limits and completed with the defaults, once, by the
service; :func:`plan_segment` also decides what the answer will hold from what the server serves."""

from __future__ import annotations

from dataclasses import replace

from seglabel_api import options

from seglabel_server.errors import InvalidArgument, LimitExceeded, PermissionDenied
from seglabel_server.pipeline.config import PipelineConfig
from seglabel_server.scheduler.batching import CLASSES, DEFAULT, INTERACTIVE
from seglabel_server.service.capabilities import Capabilities
from seglabel_server.types import LabelSpec, SegmentJob, SegmentOptions, TextOptions
from seglabel_server.vocabulary import check_name


def _unit(name: str, v: float | None, default: float) -> float:
    if v is None:
        return default
    if not (0.0 <= v <= 1.0):  # also rejects NaN
        raise InvalidArgument(f"{name} must be within [0, 1], got {v}")
    return float(v)


def _check_units(p: SegmentOptions) -> None:
    bad = options.out_of_range(p)
    if bad:
        name, v = bad[0]
        raise InvalidArgument(f"{name} must be within [0, 1], got {v}")


def resolve(c: PipelineConfig, p: SegmentOptions) -> SegmentOptions:
    """Fill defaults (every unset option the server's configuration holds), enforce limits; raises
    InvalidArgument / LimitExceeded."""
    if p.prompt_type not in ("grid", "points", "box"):
        raise InvalidArgument(f"unknown prompt_type {p.prompt_type!r}")
    if p.prompt_type == "points" and not p.points:
        raise InvalidArgument("prompt_type POINTS needs at least one point")
    if p.prompt_type == "box" and not p.boxes:
        raise InvalidArgument("prompt_type BOX needs at least one box")
    if len(p.points) > c.max_prompts or len(p.boxes) > c.max_prompts:
        raise LimitExceeded(f"at most {c.max_prompts} points and {c.max_prompts} boxes per request")
    if p.max_masks < 0 or p.top_k < 0:
        raise InvalidArgument("max_masks and top_k must not be negative")
    if p.max_masks > c.max_masks_limit:
        raise LimitExceeded(f"max_masks {p.max_masks} is over the limit {c.max_masks_limit}")
    _check_units(p)
    p = options.with_defaults(p, c)  # a negative points_per_side is not "unset": refused below
    if p.points_per_side < 1:
        raise InvalidArgument(f"points_per_side must be positive, got {p.points_per_side}")
    if p.points_per_side > c.max_points_per_side:
        raise LimitExceeded(f"points_per_side {p.points_per_side} is over the limit {c.max_points_per_side}")
    cleaned, top_k = resolve_labels(c, p)
    return replace(
        p,
        points=tuple(p.points),
        boxes=tuple(p.boxes),
        vocabulary=cleaned,
        top_k=top_k,
        min_confidence=p.min_confidence or 0.0,
        thresholds=dict(p.thresholds),
    )


def resolve_relabel(c: PipelineConfig, p: SegmentOptions) -> SegmentOptions:
    """A Relabel's labelling options (``p``'s label fields) checked and completed, as :func:`resolve`
    does for a Segment's."""
    _check_units(p)
    cleaned, top_k = resolve_labels(c, p)
    return replace(p, vocabulary=cleaned, top_k=top_k, min_confidence=p.min_confidence or 0.0)


def resolve_labels(c: PipelineConfig, p: SegmentOptions) -> tuple[tuple[str, ...], int]:
    """(the label list, top_k) of a request that labels: its list or the server's default when it
    names no stored vocabulary (whose labels the service reads); label_mode and thresholds checked."""
    if p.label_mode not in ("single", "multi"):
        raise InvalidArgument(f"unknown label_mode {p.label_mode!r}")
    for name, t in p.thresholds.items():
        if not (0.0 <= t <= 1.0):
            raise InvalidArgument(f"threshold of {name!r} must be within [0, 1], got {t}")
    if p.top_k < 0:
        raise InvalidArgument("top_k must not be negative")
    if p.vocabulary_name:
        if p.vocabulary:
            raise InvalidArgument("give vocabulary (a list) or vocabulary_name, not both")
        check_name(p.vocabulary_name)
        return (), p.top_k or c.top_k  # capped at the vocabulary's size once it is read
    vocab = tuple(p.vocabulary) or c.vocabulary
    cleaned = tuple(dict.fromkeys(v.strip() for v in vocab))
    if any(not v for v in cleaned):
        raise InvalidArgument("vocabulary entries must not be empty")
    if any(len(v) > c.max_label_chars for v in cleaned):
        raise InvalidArgument(f"vocabulary entries must be at most {c.max_label_chars} characters")
    if len(cleaned) > c.max_vocabulary:
        raise LimitExceeded(f"vocabulary of {len(cleaned)} labels is over the limit {c.max_vocabulary}")
    return cleaned, min(p.top_k or c.top_k, len(cleaned))


def resolve_text(c: PipelineConfig, o: TextOptions | None) -> TextOptions:
    o = o or TextOptions()
    return TextOptions(
        box_thresh=_unit("text box_thresh", o.box_thresh, c.text_box_thresh),
        min_confidence=_unit("text min_confidence", o.min_confidence, c.text_min_confidence),
    )


def label_spec(p: SegmentOptions, vocab=None) -> LabelSpec:
    """How resolved params ``p`` label masks: their list, or ``vocab`` (the stored vocabulary
    ``p.vocabulary_name`` names, read by the service). Thresholds must name its labels."""
    entries = vocab.entries() if vocab is not None else tuple((v, ()) for v in p.vocabulary)
    labels = [name for name, _ in entries]
    for t in p.thresholds:
        if t not in labels:
            raise InvalidArgument(f"thresholds: {t!r} is not a label of this vocabulary")
    return LabelSpec(
        entries=entries,
        mode=p.label_mode,
        top_k=min(p.top_k, len(labels)),
        min_confidence=p.min_confidence,
        thresholds=dict(p.thresholds),
        vocabulary=vocab,
    )


def check_prompts_inside(p: SegmentOptions, w: int, h: int) -> None:
    for x, y, _ in p.points:
        if not (0 <= x <= w and 0 <= y <= h):
            raise InvalidArgument(f"point ({x}, {y}) is outside the {w}x{h} image")
    for x0, y0, x1, y1 in p.boxes:
        if not (x1 > x0 and y1 > y0):
            raise InvalidArgument(f"box ({x0}, {y0}, {x1}, {y1}) must have x1 > x0 and y1 > y0")
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise InvalidArgument(f"box ({x0}, {y0}, {x1}, {y1}) is outside the {w}x{h} image")


def priority_of(p: SegmentOptions, ceiling: int = INTERACTIVE) -> int:
    """The scheduler's class of a Segment request: the one it asks for, else interactive for points
    and boxes (clicks) and default for a grid. ``ceiling``: the best class the caller's token allows;
    asking for a better one is refused (PermissionDenied); a better default is lowered to it at
    admission (``Admission.admit``)."""
    if p.priority:
        if p.priority not in CLASSES:
            raise InvalidArgument(f"priority must be one of {', '.join(CLASSES)}, got {p.priority!r}")
        if CLASSES[p.priority] < ceiling:
            best = next(k for k, v in CLASSES.items() if v == ceiling)
            raise PermissionDenied(f"this token may ask for priority {best} at best, not {p.priority}")
        return CLASSES[p.priority]
    return INTERACTIVE if p.prompt_type in ("points", "box") else DEFAULT


def plan_segment(c: PipelineConfig, p: SegmentOptions, caps: Capabilities) -> SegmentJob:
    """The job the pipeline runs for ``p``: parameters resolved (raises InvalidArgument /
    LimitExceeded), labels, depth and text decided from what was asked and what is served, and a
    note for each that is left out. Prompts are checked against the image later, once its size is
    known (:func:`check_prompts_inside`)."""
    p = resolve(c, p)
    notes: dict[str, str] = {}
    if p.skip_labels:
        notes["labels"] = "labels skipped at the client's request (skip_labels)"
    elif not caps.serves("labels"):
        notes["labels"] = caps.why_not("labels")
    if p.with_depth and not caps.serves("depth"):
        notes["depth"] = caps.why_not("depth")
    if p.with_text and not caps.serves("text"):
        notes["text"] = caps.why_not("text")
    labels = "labels" not in notes
    return SegmentJob(
        params=p,
        labels=labels,
        labelling=label_spec(p) if labels and not p.vocabulary_name else None,
        depth=p.with_depth and "depth" not in notes,
        text=p.with_text and "text" not in notes,
        notes=notes,
        complete=not (set(notes) - ({"labels"} if p.skip_labels else set())),
    )
