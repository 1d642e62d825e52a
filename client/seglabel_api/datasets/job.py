"""A labelling job's parts that do not depend on how images reach a model (the command line's
gRPC client, the HTTP gateway's dataset jobs, Ray Data): its options, its progress, and its end:
the outputs written from the journal and the report."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from seglabel_api.datasets import annotations, writers

FORMATS = ("coco", "yolo-seg")


@dataclass
class LabelOptions:
    """What each image is asked for (the Segment request's options) and what is written."""

    labels: tuple[str, ...] = ()  # vocabulary (empty: the server's default)
    vocabulary_name: str = ""  # a stored vocabulary instead (its labels are the categories)
    vocabulary_revision: int = 0  # the stored vocabulary's revision when the job started (journalled)
    points_per_side: int = 0  # 0: the server's default grid
    max_masks: int = 0
    top_k: int = 0
    min_confidence: float | None = None
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    box_nms_thresh: float | None = None
    skip_labels: bool = False  # masks only: one category, "object"
    with_depth: bool = False
    with_text: bool = False
    formats: tuple[str, ...] = ("coco",)
    mask_format: str = "rle"  # rle | polygon
    polygon_tolerance: float = 1.0  # pixels (Douglas-Peucker); 0 keeps every boundary pixel
    window: int = 0  # requests in flight (0: from the server's batch sizes)
    timeout: float = 900.0  # per request, seconds
    server_wait_s: float = 600.0  # how long an unreachable server is waited for before the run stops

    def job(self) -> dict:
        """What decides the annotations: a journal made with other values is not continued."""
        keep = ("labels", "points_per_side", "max_masks", "top_k", "min_confidence", "pred_iou_thresh",
                "stability_score_thresh", "box_nms_thresh", "skip_labels", "with_depth", "with_text",
                "mask_format", "polygon_tolerance", "vocabulary_name", "vocabulary_revision")  # fmt: skip
        d = {k: getattr(self, k) for k in keep}
        d["labels"] = list(d["labels"])
        if not self.vocabulary_name:  # as journals written before vocabularies existed
            del d["vocabulary_name"], d["vocabulary_revision"]
        d["yolo"] = "yolo-seg" in self.formats
        return d

    def body(self) -> dict:
        """The SegmentRequest's fields (grid prompts: the unspecified prompt type; no overlay), by
        their proto names."""
        body = dict(
            points_per_side=self.points_per_side,
            vocabulary=[] if self.vocabulary_name else list(self.labels),
            vocabulary_name=self.vocabulary_name or None,
            max_masks=self.max_masks,
            top_k=self.top_k,
            min_confidence=self.min_confidence,
            pred_iou_thresh=self.pred_iou_thresh,
            stability_score_thresh=self.stability_score_thresh,
            box_nms_thresh=self.box_nms_thresh,
            skip_labels=self.skip_labels,
            with_depth=self.with_depth,
            with_text=self.with_text,
            return_overlay=False,
        )
        return {k: v for k, v in body.items() if v is not None}


@dataclass
class Progress:
    total: int  # distinct images of the folder
    done: int = 0  # labelled or failed so far (resumed ones included)
    failed: int = 0
    t0: float = field(default_factory=time.monotonic)
    this_run: int = 0

    def rate(self) -> float:
        return self.this_run / max(time.monotonic() - self.t0, 1e-9)

    def add(self, rec: dict) -> None:
        """One image's record, just journalled."""
        self.done += 1
        self.this_run += 1
        self.failed += not rec["ok"]


def progress_bar(stream=sys.stderr, every_s: float = 0.5):
    """A progress callback that redraws one line: count, images/s, ETA, failures."""
    last = [0.0]

    def show(p: Progress, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - last[0] < every_s:
            return
        last[0] = now
        rate = p.rate()
        left = (p.total - p.done) / rate if rate > 0 else float("inf")
        eta = "--" if left == float("inf") else time.strftime("%H:%M:%S", time.gmtime(left))
        width = 28
        filled = int(width * p.done / max(p.total, 1))
        stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {p.done}/{p.total} images  {rate:5.2f} img/s  "
            f"ETA {eta}  failed {p.failed}" + ("\n" if final else "")
        )
        stream.flush()

    return show


def finish(
    root, out, inv, journal, opts, categories, info, prog, seconds, images_root: Path | None = None
) -> dict:
    """The outputs from the journal, and the report (written and returned). ``root`` names the
    input; ``images_root`` (default: ``root``) is the local folder YOLO's ``images`` links to."""
    per_label: Counter[str] = Counter()
    failed = []
    dropped = rle_kept = 0
    done = [item for item in inv.items if item.sha in journal.records]
    for item, rec in zip(done, journal.read(item.sha for item in done)):
        if rec["ok"]:
            for ann in rec["anns"]:
                per_label[ann["label"]] += len(item.names)
            dropped += rec.get("dropped", 0)
            rle_kept += rec.get("rle_kept", 0)
        else:
            failed.extend({"file": n, "reason": rec["reason"]} for n in item.names)
    failed += [{"file": n, "reason": why} for n, why in inv.unreadable]
    outputs = {}
    note = (
        "masks are written as COCO RLE"
        if opts.mask_format == "rle"
        else "polygons (OpenCV contours, Douglas-Peucker at "
        f"{opts.polygon_tolerance} px); a mask with holes, or whose polygons redraw it with IoU under "
        f"{annotations.POLYGON_MIN_IOU}, stays RLE"
    )
    info_block = {
        "description": f"seglabel label {root}",
        "version": "1.0",
        "mask_format": opts.mask_format,
        "segmentation": note,
        "model": " ".join(f"{m.name}:{m.architecture}" for m in info.models) if info.models else "",
        "random_weights": bool(info.random_weights),
        "score": "label confidence (CLIP softmax over the categories); predicted_iou: SAM2's own estimate",
    }
    if "coco" in opts.formats:
        n = writers.write_coco(out / "annotations.coco.json", inv, journal, categories, info_block)
        outputs["coco"] = {"file": str(out / "annotations.coco.json"), "annotations": n}
    if "yolo-seg" in opts.formats:
        link = images_root if images_root is not None else (root if isinstance(root, Path) else None)
        n = writers.write_yolo(out / "yolo", link, inv, journal, categories)
        outputs["yolo-seg"] = {"folder": str(out / "yolo"), "objects": n}
    done_names = sum(len(i.names) for i in inv.items if journal.records.get(i.sha, (False,))[0])
    report = {
        "folder": str(root),
        "files": inv.files,
        "images": inv.images,
        "distinct_images": len(inv.items),
        "labelled": done_names,
        "duplicates": inv.images - len(inv.items),
        "skipped_not_images": len(inv.skipped),
        "skipped": inv.skipped[:1000],
        "failed": failed,
        "masks_per_label": dict(per_label.most_common()),
        "masks_dropped_under_min_confidence": dropped,
        "masks_kept_as_rle_in_polygon_mode": rle_kept if opts.mask_format == "polygon" else 0,
        "resumed_from_journal": journal.resumed,
        "labelled_this_run": prog.this_run,
        "seconds": round(seconds, 2),
        "images_per_s": round(prog.this_run / seconds, 3) if seconds > 0 else 0.0,
        "random_weights": bool(info.random_weights),
        "outputs": outputs,
    }
    writers.write_report(out / "report.json", report)
    return report
