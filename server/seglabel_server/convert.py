"""protobuf <-> domain objects. The servicer calls these and nothing else computes there."""

from __future__ import annotations

from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb

from seglabel_server.errors import InvalidArgument
from seglabel_server.types import (
    Accepted,
    Done,
    LabelResult,
    LabelsUpdate,
    MaskResult,
    MasksReady,
    Progress,
    SegmentParams,
    SegmentResult,
)

_PROMPTS = {
    pb.PROMPT_TYPE_UNSPECIFIED: "grid",
    pb.PROMPT_TYPE_GRID: "grid",
    pb.PROMPT_TYPE_POINTS: "points",
    pb.PROMPT_TYPE_BOX: "box",
}
_TIMING_FIELDS = {
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
}


def params_from_pb(req: pb.SegmentRequest) -> SegmentParams:
    if req.prompt_type not in _PROMPTS:
        raise InvalidArgument(f"unknown prompt_type {req.prompt_type}")
    return SegmentParams(
        prompt_type=_PROMPTS[req.prompt_type],
        points_per_side=req.points_per_side,
        points=[(p.x, p.y, 1 if p.positive else 0) for p in req.points],
        boxes=[(b.x0, b.y0, b.x1, b.y1) for b in req.boxes],
        max_masks=req.max_masks,
        vocabulary=tuple(req.vocabulary),
        top_k=req.top_k,
        min_confidence=req.min_confidence if req.HasField("min_confidence") else None,
        return_overlay=req.return_overlay,
        skip_labels=req.skip_labels,
        multimask=req.multimask,
        pred_iou_thresh=req.pred_iou_thresh if req.HasField("pred_iou_thresh") else None,
        stability_score_thresh=req.stability_score_thresh if req.HasField("stability_score_thresh") else None,
        box_nms_thresh=req.box_nms_thresh if req.HasField("box_nms_thresh") else None,
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


def label_to_pb(lab: LabelResult) -> pb.Label:
    return pb.Label(
        label=lab.label,
        confidence=lab.confidence,
        mask_index=lab.mask_index,
        top_k=[pb.LabelScore(label=n, confidence=c) for n, c in lab.top_k],
    )


def result_to_pb(r: SegmentResult, include_masks: bool = True) -> pb.SegmentResponse:
    timings = pb.Timings(**{_TIMING_FIELDS[k]: v for k, v in r.timings.items() if k in _TIMING_FIELDS})
    return pb.SegmentResponse(
        success=r.complete,
        segmented_image=r.overlay_png,
        mask_count=len(r.masks),
        labels=[label_to_pb(lab) for lab in r.labels],
        masks=[mask_to_pb(m) for m in r.masks] if include_masks else [],
        timings=timings,
        width=r.width,
        height=r.height,
        labels_unavailable_reason=r.labels_unavailable_reason,
    )


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
    )
