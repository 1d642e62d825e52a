"""Domain objects of a request and its answer, independent of any transport (the protobuf mapping
lives in ``transport/grpc/convert.py``, and the HTTP JSON is derived from it)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from seglabel_api.options import SegmentOptions as SegmentOptions  # re-exported: see below

from seglabel_server.errors import Cancelled, DeadlineExceeded

# What a client asks of one image (SegmentOptions) is declared once, with every option's meaning,
# in the contract package (``seglabel_api.options``) and run here as it is; zero / empty / None is
# "the server's default", filled once by the service (``service.params``).


@dataclass
class ExampleIn:
    """An example as a client gives it (AddExamples): an uploaded image (whole, a box of it, or a
    mask of it), or one mask of a recent answer."""

    file_id: str = ""
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1, pixels
    mask: dict | None = None  # COCO RLE {"size": [h, w], "counts": str}
    request_id: str = ""
    mask_index: int = 0
    negative: bool = False
    # Where the example came from, kept in its stored source (e.g. "label-studio:3:17", a project's
    # annotation): a tool that adds examples finds and replaces its own by it.
    origin: str = ""

    @staticmethod
    def from_source(source: dict, negative: bool = False) -> ExampleIn:
        """A stored example's source (``vocabulary.StoredExample.source``) as an example again."""
        box = source.get("box")
        return ExampleIn(
            file_id=source.get("file_id", ""),
            box=tuple(box) if box else None,
            mask=source.get("mask"),
            negative=negative,
            origin=source.get("origin", ""),
        )


@dataclass
class LabelSpec:
    """How masks are labelled, resolved once by the service (for Segment and Relabel alike):
    ``entries`` (label, prompts) in order, the stored vocabulary when one is named (its examples
    and thresholds), the mode and the request's options."""

    entries: tuple[tuple[str, tuple[str, ...]], ...]
    mode: str = "single"
    top_k: int = 3
    min_confidence: float = 0.0
    thresholds: dict[str, float] = field(default_factory=dict)
    vocabulary: object = None  # vocabulary.Vocabulary

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.entries)


@dataclass
class SegmentJob:
    """A Segment request as the service resolved it, once: ``params`` complete (every default filled,
    every limit checked, prompts inside the image) and what the answer will hold. The pipeline runs
    exactly this. ``notes``: why ``labels`` / ``depth`` / ``text`` are not in the answer when they are
    not (not served here, or skipped at the client's request); ``complete`` is False when something
    asked for cannot be produced."""

    params: SegmentOptions
    labels: bool = False
    depth: bool = False
    text: bool = False
    notes: dict[str, str] = field(default_factory=dict)
    complete: bool = True
    labelling: LabelSpec | None = None  # set by the service when ``labels``


@dataclass
class TextOptions:
    box_thresh: float | None = None  # None: server default
    min_confidence: float | None = None


@dataclass
class DepthResult:
    """Relative inverse depth at the image's size (larger is nearer), as sent: uint16 codes over
    [min, max] and the float32 values they decode to (what every statistic is computed on)."""

    codes: np.ndarray  # uint16 [H,W]
    values: np.ndarray  # float32 [H,W]
    min: float
    max: float
    colorized_png: bytes = b""


@dataclass
class MaskDepth:
    mask_index: int
    median: float
    min: float
    max: float
    rank: int = -1  # 0: nearest


@dataclass
class TextResult:
    lines: list  # ocr.TextLine, reading order

    @property
    def full_text(self) -> str:
        return "\n".join(line.text for line in self.lines)


@dataclass
class MaskText:
    mask_index: int
    line_indices: list[int]
    text: str


@dataclass
class MaskResult:
    index: int
    rle: dict  # COCO compressed RLE: {"size": [h, w], "counts": str}
    bbox: tuple[float, float, float, float]  # x, y, w, h
    area: int
    predicted_iou: float
    stability_score: float
    point: tuple[float, float] | None = None


@dataclass
class LabelResult:
    mask_index: int
    label: str
    confidence: float
    top_k: list[tuple]  # (label, score) or, MULTI, (label, score, threshold)
    labels: list[tuple[str, float, float]] = field(default_factory=list)  # MULTI: every label above


@dataclass
class Answer:
    """What the server keeps of a labelled answer for Relabel and AddExamples(request_id): its
    masks' crop embeddings (CLIP image tower outputs), the image's sha256 and the masks' RLEs
    (an example's source), the CLIP model that embedded them."""

    embeddings: np.ndarray  # float32 [K, D], row i = mask i
    image_key: str
    rles: list[dict]
    clip_model: str
    chunks: list[int]  # masks per CLIP call when it was labelled: Relabel scores the same chunks

    @property
    def nbytes(self) -> int:
        return int(self.embeddings.nbytes) + sum(len(r["counts"]) + 16 for r in self.rles) + 256


@dataclass
class SegmentResult:
    width: int
    height: int
    masks: list[MaskResult]
    labels: list[LabelResult]
    overlay_png: bytes = b""
    timings: dict[str, float] = field(default_factory=dict)
    labels_unavailable_reason: str = ""
    # False when part of what was asked for could not be produced (labels requested, CLIP unavailable).
    complete: bool = True
    depth: DepthResult | None = None
    mask_depth: list[MaskDepth] = field(default_factory=list)
    text: TextResult | None = None
    mask_text: list[MaskText] = field(default_factory=list)
    depth_unavailable_reason: str = ""
    text_unavailable_reason: str = ""
    request_id: str = ""  # set when the answer is kept for Relabel
    label_mode: str = "single"


# Events of a streamed request; their order is documented once, on SegmentEvent in the proto.
@dataclass
class Accepted:
    request_id: str
    width: int
    height: int


@dataclass
class MasksReady:
    masks: list[MaskResult]


@dataclass
class LabelsUpdate:
    labels: list[LabelResult]
    done: int
    total: int


@dataclass
class Progress:
    stage: str
    fraction: float


@dataclass
class DepthReady:
    depth: DepthResult
    mask_depth: list[MaskDepth]


@dataclass
class TextReady:
    text: TextResult
    mask_text: list[MaskText]


@dataclass
class Done:
    result: SegmentResult


@dataclass
class RequestContext:
    """Per-request bookkeeping shared with the scheduler: cancellation, deadline, queue time."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    deadline: float | None = None  # time.monotonic() seconds
    cancel_event: threading.Event = field(default_factory=threading.Event)
    queue_ms: float = 0.0
    busy_until: float = 0.0  # monotonic end of this request's last batch (own work is not queueing)
    # The scheduler's order (``scheduler/batching.py``): the class (0 interactive, 1 default, 2 batch),
    # then the fair-share turn of the request's share (a job or a caller; 0: not admitted), then the
    # monotonic time the request was admitted (0: not yet, its items' own queueing time).
    priority: int = 1
    admitted: float = 0.0
    turn: int = 0
    share: str = ""
    ceiling: int = 0  # the best class the caller's token may ask for (0: any)

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def done(self) -> bool:
        return self.cancelled or self.expired

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled(f"request {self.request_id} was cancelled")
        if self.expired:
            raise DeadlineExceeded(f"request {self.request_id} passed its deadline")
