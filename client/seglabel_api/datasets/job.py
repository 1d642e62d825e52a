"""A labelling job's parts that do not depend on how images reach a model (the command line's
gRPC client, the HTTP gateway's dataset jobs, Ray Data): its options, its progress, and its end:
the outputs written from the journal and the report."""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from seglabel_api import options
from seglabel_api.datasets import annotations as records
from seglabel_api.datasets import tools, writers
from seglabel_api.options import SegmentOptions

FORMATS = ("coco", "yolo-seg", "label-studio", "cvat")
ORDERS = ("none", "uncertainty")


def dataset_request(**kw) -> SegmentOptions:
    """A dataset job's request options from keyword arguments (``options.from_kwargs`` over the
    options a dataset job takes: grid prompts, filters, labels, depth and text)."""
    return options.from_kwargs(options.DATASET, **kw)


@dataclass
class LabelOptions:
    """What each image is asked for (``request``: the dataset options of a Segment request; its
    prompts are always the grid, no overlay) and what is written."""

    request: SegmentOptions = field(default_factory=SegmentOptions)
    vocabulary_revision: int = 0  # the stored vocabulary's revision when the job started (journalled)
    formats: tuple[str, ...] = ("coco",)
    mask_format: str = "rle"  # rle | polygon
    polygon_tolerance: float = 1.0  # pixels (Douglas-Peucker); 0 keeps every boundary pixel
    window: int = 0  # requests in flight (0: from the server's batch sizes)
    timeout: float = 900.0  # per request, seconds
    server_wait_s: float = 600.0  # how long an unreachable server is waited for before the run stops
    order: str = "none"  # uncertainty: also the images' list, most doubtful first (and tasks in that order)
    image_url_prefix: str = tools.LOCAL_FILES  # Label Studio tasks: data.image = prefix + the image's path
    # this run's fair-share key on the server: two jobs take turns, even from one process (whose
    # channels share a connection); not part of what the journal compares
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        outside = [f.name for f in options.declared() if options.DATASET not in f.metadata["scopes"]
                   and getattr(self.request, f.name) != options.default(f)]  # fmt: skip
        if outside:
            raise ValueError(f"a dataset job does not take {', '.join(outside)}")

    def job(self) -> dict:
        """What decides the annotations (a journal made with other values is not continued): the
        request's dataset options and how masks are written, each left out at its default, so that
        a journal written before an option existed still names the same job (:func:`canonical_job`)."""
        request = {
            f.name: _jsonable(getattr(self.request, f.name)) for f in options.declared(options.DATASET)
        }
        d = {**request, "mask_format": self.mask_format,
             "polygon_tolerance": self.polygon_tolerance, "yolo": "yolo-seg" in self.formats,
             "vocabulary_revision": self.vocabulary_revision}  # fmt: skip
        return canonical_job(d)

    def segment_request(self) -> SegmentOptions:
        """Each image's Segment request: grid prompts, no overlay, the batch class unless the job's
        options name another, and the run as its fair-share key."""
        return replace(self.request, prompt_type="grid", return_overlay=False,
                       priority=self.request.priority or "batch", job=f"label-{self.run}")  # fmt: skip


# What a journal's job held by default, and keys an older journal wrote under another name.
_JOB_DEFAULTS = {"mask_format": "rle", "polygon_tolerance": 1.0, "yolo": False, "vocabulary_revision": 0}
_JOB_RENAMED = {"labels": "vocabulary"}


def _jsonable(value):
    """An option's value as JSON holds it (tuples as lists)."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return dict(value) if isinstance(value, dict) else value


def canonical_job(job: dict) -> dict:
    """A journal's job without the values every job has by default (the declared defaults of the
    request options, and the writers'): two jobs are the same job when these are equal."""
    out = {}
    declared = {f.name: options.default(f) for f in options.declared()}
    for key, value in job.items():
        key = _JOB_RENAMED.get(key, key)
        base = declared.get(key, _JOB_DEFAULTS.get(key, object()))
        if value != _jsonable(base):
            out[key] = value
    return out


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
    failed: list[dict] = []
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
        f"{records.POLYGON_MIN_IOU}, stays RLE"
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
    order = tools.uncertainty_order(inv, journal) if opts.order == "uncertainty" else None
    if order is not None:
        tools.write_order(out / tools.ORDER, order)
        outputs["order"] = {"file": str(out / tools.ORDER), "images": len(order)}
    if "label-studio" in opts.formats:
        version = f"seglabel {info_block['model']}".strip() + (
            " (random weights)" if info.random_weights else ""
        )
        n = tools.write_label_studio(out, inv, journal, categories, version, opts.image_url_prefix,
                                     [name for name, _ in order] if order is not None else None)  # fmt: skip
        outputs["label-studio"] = {"file": str(out / tools.LS_TASKS), "config": str(out / tools.LS_CONFIG),
                                   "regions": n}  # fmt: skip
    if "cvat" in opts.formats:
        n = tools.write_cvat(out / tools.CVAT_XML, inv, journal, categories, f"seglabel label {root}")
        outputs["cvat"] = {"file": str(out / tools.CVAT_XML), "shapes": n}
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
