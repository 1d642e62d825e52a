"""protobuf <-> domain objects. The servicer calls these and nothing else computes there."""

from __future__ import annotations

from typing import cast

from seglabel_api import options
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb

from seglabel_server.errors import InvalidArgument
from seglabel_server.pipeline.tracker import Prompt
from seglabel_server.service.tracking import TrackAnswer, TrackFrame, TrackOptions
from seglabel_server.service.vocabularies import LabelIn
from seglabel_server.types import (
    Accepted,
    DepthReady,
    DepthResult,
    Done,
    ExampleIn,
    LabelResult,
    LabelsUpdate,
    MaskResult,
    MasksReady,
    Progress,
    SegmentOptions,
    SegmentResult,
    TextOptions,
    TextReady,
    TextResult,
)
from seglabel_server.vocabulary import Vocabulary

_TIMING_FIELDS = {
    "memory": "memory_ms",
    "queue": "queue_ms",
    "decode_image": "decode_image_ms",
    "encoder": "encoder_ms",
    "decoder": "decoder_ms",
    "filter": "filter_ms",
    "upsample": "upsample_ms",
    "crops": "crops_ms",
    "clip": "clip_ms",
    "render": "render_ms",
    "total": "total_ms",
    "depth": "depth_ms",
    "text": "text_ms",
}


def _mode_pb(mode: str) -> pb.LabelMode:
    return cast(pb.LabelMode, options.enum_number(pb.LabelMode.DESCRIPTOR, mode))


def params_from_pb(req: pb.SegmentRequest) -> SegmentOptions:
    """A SegmentRequest's options, mapped by their declaration (``seglabel_api.options``)."""
    return _options(req, None)


def relabel_params_from_pb(req: pb.RelabelRequest) -> SegmentOptions:
    """A Relabel's labelling options, as the SegmentOptions fields they share."""
    return _options(req, options.RELABEL)


def _options(req, scope: str | None) -> SegmentOptions:
    try:
        return options.from_pb(req, scope)
    except ValueError as exc:  # an enum number the proto does not define
        raise InvalidArgument(str(exc)) from None


def relabel_to_pb(request_id: str, labels, mode: str, timings) -> pb.RelabelResponse:
    return pb.RelabelResponse(
        labels=[label_to_pb(lab) for lab in labels],
        request_id=request_id,
        label_mode=_mode_pb(mode),
        timings=timings_to_pb(timings),
    )


def rle_from_pb(rle: pb.RLE) -> dict:
    return {"size": list(rle.size), "counts": rle.counts}


def example_from_pb(e: pb.Example) -> ExampleIn:
    return ExampleIn(
        file_id=e.file_id,
        box=(e.box.x0, e.box.y0, e.box.x1, e.box.y1) if e.HasField("box") else None,
        mask=rle_from_pb(e.mask) if e.HasField("mask") else None,
        request_id=e.request_id,
        mask_index=e.mask_index,
        negative=e.negative,
    )


def labels_in_from_pb(labels) -> list[LabelIn]:
    return [LabelIn(lab.name, tuple(lab.prompts), lab.threshold) for lab in labels]


def _source_to_pb(source: dict, positive: bool) -> pb.Example:
    out = pb.Example(file_id=source.get("file_id", ""), negative=not positive)
    if source.get("box"):
        x0, y0, x1, y1 = source["box"]
        out.box.CopyFrom(pb.Box(x0=x0, y0=y0, x1=x1, y1=y1))
    if source.get("mask"):
        out.mask.CopyFrom(pb.RLE(size=source["mask"]["size"], counts=source["mask"]["counts"]))
    return out


def vocabulary_to_pb(v: Vocabulary, thresholds=None) -> pb.Vocabulary:
    """``thresholds``: (value, source, note) per label (the MULTI thresholds it gets)."""
    out = pb.Vocabulary(name=v.name, clip_model=v.clip_model, revision=v.revision, alpha=v.alpha,
                        beta=v.beta, stored_bytes=v.stored_bytes)  # fmt: skip
    for i, lab in enumerate(v.labels):
        info = pb.VocabularyLabelInfo(
            label=pb.VocabularyLabel(name=lab.name, prompts=list(lab.prompts), threshold=lab.threshold),
            examples=[
                pb.StoredExample(id=e.id, positive=e.positive, source=_source_to_pb(e.source, e.positive))
                for e in lab.examples
            ],  # fmt: skip
            positives=lab.positives,
            negatives=lab.negatives,
        )
        if thresholds is not None:
            info.threshold, info.threshold_source, info.threshold_note = thresholds[i]
        out.labels.append(info)
    return out


def vocabulary_summary_to_pb(v: Vocabulary) -> pb.VocabularySummary:
    return pb.VocabularySummary(name=v.name, labels=len(v.labels), examples=v.examples, clip_model=v.clip_model,
                                revision=v.revision)  # fmt: skip


def text_options_from_pb(o: pb.TextOptions) -> TextOptions:
    return TextOptions(
        box_thresh=o.box_thresh if o.HasField("box_thresh") else None,
        min_confidence=o.min_confidence if o.HasField("min_confidence") else None,
    )


def timings_to_pb(timings: dict[str, float]) -> pb.Timings:
    return pb.Timings(**{_TIMING_FIELDS[k]: v for k, v in timings.items() if k in _TIMING_FIELDS})


def depth_to_pb(d: DepthResult) -> pb.DepthMap:
    h, w = d.values.shape
    return pb.DepthMap(
        width=w,
        height=h,
        data=d.codes.astype("<u2").tobytes(),
        min=d.min,
        max=d.max,
        colorized_png=d.colorized_png,
    )


def text_to_pb(t: TextResult) -> pb.TextResult:
    return pb.TextResult(
        lines=[
            pb.TextLine(text=ln.text, confidence=ln.confidence, box=[pb.Vertex(x=x, y=y) for x, y in ln.box])
            for ln in t.lines
        ],
        full_text=t.full_text,
    )


def mask_depth_to_pb(stats) -> list[pb.MaskDepth]:
    return [
        pb.MaskDepth(mask_index=m.mask_index, median=m.median, min=m.min, max=m.max, rank=m.rank)
        for m in stats
    ]


def mask_text_to_pb(items) -> list[pb.MaskText]:
    return [pb.MaskText(mask_index=m.mask_index, line_indices=m.line_indices, text=m.text) for m in items]


def depth_response_to_pb(d: DepthResult, timings: dict[str, float]) -> pb.EstimateDepthResponse:
    return pb.EstimateDepthResponse(depth=depth_to_pb(d), timings=timings_to_pb(timings))


def text_response_to_pb(t: TextResult, width: int, height: int, timings) -> pb.ExtractTextResponse:
    return pb.ExtractTextResponse(
        text=text_to_pb(t), width=width, height=height, timings=timings_to_pb(timings)
    )


def mask_to_pb(m: MaskResult) -> pb.Mask:
    out = pb.Mask(
        index=m.index,
        rle=pb.RLE(size=m.rle["size"], counts=m.rle["counts"]),
        bbox=list(m.bbox),
        area=m.area,
        predicted_iou=m.predicted_iou,
        stability_score=m.stability_score,
    )
    if m.point is not None:
        out.point.CopyFrom(pb.Point(x=m.point[0], y=m.point[1], positive=True))
    return out


def _score_to_pb(score: tuple) -> pb.LabelScore:
    return pb.LabelScore(label=score[0], confidence=score[1], threshold=score[2] if len(score) > 2 else 0.0)


def label_to_pb(lab: LabelResult) -> pb.Label:
    return pb.Label(
        label=lab.label,
        confidence=lab.confidence,
        mask_index=lab.mask_index,
        top_k=[_score_to_pb(t) for t in lab.top_k],
        labels=[_score_to_pb(t) for t in lab.labels],
    )


def result_to_pb(r: SegmentResult, include_masks: bool = True) -> pb.SegmentResponse:
    """The whole answer; ``include_masks=False`` (a stream's summary) leaves out what the stream sent
    before: masks, the depth map and the text."""
    timings = timings_to_pb(r.timings)
    out = pb.SegmentResponse(
        success=r.complete,
        segmented_image=r.overlay_png,
        mask_count=len(r.masks),
        labels=[label_to_pb(lab) for lab in r.labels],
        masks=[mask_to_pb(m) for m in r.masks] if include_masks else [],
        timings=timings,
        width=r.width,
        height=r.height,
        labels_unavailable_reason=r.labels_unavailable_reason,
        depth_unavailable_reason=r.depth_unavailable_reason,
        text_unavailable_reason=r.text_unavailable_reason,
        request_id=r.request_id,
        label_mode=_mode_pb(r.label_mode),
    )
    if include_masks:
        if r.depth is not None:
            out.depth.CopyFrom(depth_to_pb(r.depth))
            out.mask_depth.extend(mask_depth_to_pb(r.mask_depth))
        if r.text is not None:
            out.text.CopyFrom(text_to_pb(r.text))
            out.mask_text.extend(mask_text_to_pb(r.mask_text))
    return out


def event_to_pb(ev) -> pb.SegmentEvent:
    if isinstance(ev, Accepted):
        return pb.SegmentEvent(
            accepted=pb.SegmentEvent.Accepted(request_id=ev.request_id, width=ev.width, height=ev.height)
        )
    if isinstance(ev, MasksReady):
        return pb.SegmentEvent(masks=pb.SegmentEvent.Masks(masks=[mask_to_pb(m) for m in ev.masks]))
    if isinstance(ev, LabelsUpdate):
        return pb.SegmentEvent(
            label_update=pb.SegmentEvent.LabelUpdate(
                labels=[label_to_pb(lab) for lab in ev.labels], done=ev.done, total=ev.total
            )
        )
    if isinstance(ev, Progress):
        return pb.SegmentEvent(progress=pb.SegmentEvent.Progress(stage=ev.stage, fraction=ev.fraction))
    if isinstance(ev, DepthReady):
        return pb.SegmentEvent(
            depth=pb.SegmentEvent.DepthEvent(
                depth=depth_to_pb(ev.depth), mask_depth=mask_depth_to_pb(ev.mask_depth)
            )
        )
    if isinstance(ev, TextReady):
        return pb.SegmentEvent(
            text=pb.SegmentEvent.TextEvent(text=text_to_pb(ev.text), mask_text=mask_text_to_pb(ev.mask_text))
        )
    if isinstance(ev, Done):
        return pb.SegmentEvent(summary=result_to_pb(ev.result, include_masks=False))
    raise TypeError(f"unknown event {type(ev).__name__}")


def info_to_pb(info: dict) -> pb.ServerInfo:
    return pb.ServerInfo(
        version=info["version"],
        backend=info["backend"],
        device=info["device"],
        providers=info["providers"],
        models=[pb.ModelInfo(**m) for m in info["models"]],
        random_weights=info["random_weights"],
        default_vocabulary=list(info["default_vocabulary"]),
        limits=pb.Limits(**info["limits"]),
        labels_unavailable_reason=info["labels_unavailable_reason"],
        depth_unavailable_reason=info["depth_unavailable_reason"],
        text_unavailable_reason=info["text_unavailable_reason"],
        tracking_unavailable_reason=info["tracking_unavailable_reason"],
        served_by=info["served_by"],
        upload_store=info["upload_store"],
        defaults=pb.SegmentDefaults(**info["defaults"]),
        vocabulary_store=info["vocabulary_store"],
        clip_model=info["clip_model"],
        queues=[
            pb.QueueInfo(**{**q, "priority": options.enum_number(pb.Priority.DESCRIPTOR, q["priority"])})
            for q in info.get("queues", ())
        ],
    )


_TRACK_MODES = {pb.TRACK_MODE_UNSPECIFIED: "file", pb.TRACK_MODE_FILE: "file", pb.TRACK_MODE_LIVE: "live"}


def track_options_from_pb(req: pb.TrackRequest) -> TrackOptions:
    if not req.HasField("open"):
        raise InvalidArgument("the first TrackRequest opens the session: set open (and no frame)")
    if req.open.mode not in _TRACK_MODES:
        raise InvalidArgument(f"unknown track mode {req.open.mode}")
    o = req.open
    labelling = None
    if o.vocabulary or o.vocabulary_name:
        labelling = SegmentOptions(vocabulary=tuple(o.vocabulary), vocabulary_name=o.vocabulary_name)
    detect = params_from_pb(o.detect_options) if o.HasField("detect_options") else None
    first = o.first_detected_id if o.first_detected_id > 0 else 10000
    return TrackOptions(
        _TRACK_MODES[o.mode], max(0, o.num_frames), labelling, o.label_every or 5, detect, first
    )


def track_frame_from_pb(req: pb.TrackRequest) -> TrackFrame:
    if req.HasField("open"):
        raise InvalidArgument("open goes in the first TrackRequest only")
    prompts = []
    for p in req.prompts:
        box = (p.box.x0, p.box.y0, p.box.x1, p.box.y1) if p.HasField("box") else None
        points = [(q.x, q.y) for q in p.points]
        prompts.append(Prompt(p.object_id, points, [int(q.positive) for q in p.points], box))
    return TrackFrame(req.frame_index, req.image, prompts, list(req.remove), req.detect)


def track_answer_to_pb(a: TrackAnswer) -> pb.TrackResponse:
    return pb.TrackResponse(
        frame_index=a.index, width=a.width, height=a.height, dropped_frames=a.dropped,
        timings=timings_to_pb(a.timings), state_bytes=a.state_bytes,
        objects=[pb.TrackedObject(object_id=o.obj_id, rle=pb.RLE(size=o.rle["size"], counts=o.rle["counts"]),
                                  bbox=o.bbox, area=o.area, object_score=o.score, present=o.score > 0,
                                  predicted_iou=o.iou, prompted=o.prompted, label_changed=o.label_changed, detected=o.detected,
                                  label=label_to_pb(o.label) if o.label is not None else None) for o in a.objects],
    )  # fmt: skip
