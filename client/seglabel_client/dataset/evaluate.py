"""``seglabel eval``: COCO segmentation AP / AR of a labelled dataset against ground truth
(pycocotools' COCOeval), overall and per category. Images are matched by ``file_name`` and
categories by name, so the two files may number them differently."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

STATS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
         "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")  # fmt: skip


def _load(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def evaluate(gt_path, pred_path, max_dets: int = 100) -> dict:
    """{"stats": {AP, AP50, ...}, "per_category": [{name, gt, pred, AP, AP50}], "images": n}."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, pred = _load(gt_path), _load(pred_path)
    image_of = {im["file_name"]: im["id"] for im in gt["images"]}
    cat_of = {c["name"]: c["id"] for c in gt["categories"]}
    pred_image = {im["id"]: image_of.get(im["file_name"]) for im in pred["images"]}
    pred_cat = {c["id"]: cat_of.get(c["name"]) for c in pred.get("categories", [])}
    results = []
    for ann in pred["annotations"]:
        image_id, cat_id = pred_image.get(ann["image_id"]), pred_cat.get(ann["category_id"])
        if image_id is None or cat_id is None:
            continue  # an image or a category the ground truth does not have
        results.append({"image_id": image_id, "category_id": cat_id, "segmentation": ann["segmentation"],
                        "score": float(ann.get("score", 1.0))})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results) if results else COCO()
        if not results:
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.imgIds = sorted(
            {image_of[n] for n in image_of if n in {im["file_name"] for im in pred["images"]}}
        )
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: float(v) for k, v in zip(STATS, ev.stats)}
    per_cat = []
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    for k, cat in enumerate(ev.params.catIds):
        name = coco_gt.cats[cat]["name"]
        p = precision[:, :, k, 0, -1]
        p50 = precision[0, :, k, 0, -1]
        per_cat.append({
            "name": name,
            "gt": len(coco_gt.getAnnIds(imgIds=ev.params.imgIds, catIds=[cat], iscrowd=None)),
            "pred": sum(1 for r in results if r["category_id"] == cat and r["image_id"] in set(ev.params.imgIds)),
            "AP": float(np.mean(p[p > -1])) if (p > -1).any() else -1.0,
            "AP50": float(np.mean(p50[p50 > -1])) if (p50 > -1).any() else -1.0,
        })  # fmt: skip
    return {"images": len(ev.params.imgIds), "stats": stats, "per_category": per_cat}


def format_eval(result: dict) -> str:
    s = result["stats"]
    lines = [f"COCO segmentation over {result['images']} images (pycocotools COCOeval, iouType segm)"]
    lines.append("  " + "  ".join(f"{k} {s[k]:.3f}" for k in ("AP", "AP50", "AP75", "AR100")))
    lines.append("  " + "  ".join(f"{k} {s[k]:.3f}" for k in ("AP_small", "AP_medium", "AP_large")))
    lines.append(f"  {'category':<24} {'gt':>6} {'pred':>6} {'AP':>7} {'AP50':>7}")
    for c in result["per_category"]:
        ap = "   n/a" if c["AP"] < 0 else f"{c['AP']:7.3f}"
        ap50 = "   n/a" if c["AP50"] < 0 else f"{c['AP50']:7.3f}"
        lines.append(f"  {c['name']:<24} {c['gt']:>6} {c['pred']:>6} {ap} {ap50}")
    return "\n".join(lines)
