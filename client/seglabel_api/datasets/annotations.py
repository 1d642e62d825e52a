"""One image's answer as dataset annotations: COCO segmentation (RLE as the server sends it, or
polygons from OpenCV's contours), area and bbox computed from exactly what is written (pycocotools),
and the YOLO-seg polygon. Pure functions of a response; no I/O."""

from __future__ import annotations

import numpy as np

MASK_FORMATS = ("rle", "polygon")
# A mask is written as polygons only when they redraw it this closely (IoU of the polygons'
# raster with the mask); otherwise (holes, specks a polygon cannot hold) it stays RLE.
POLYGON_MIN_IOU = 0.9


def _mu():
    from pycocotools import mask as mask_utils

    return mask_utils


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - the dataset extra installs it
        raise RuntimeError(
            "polygons need OpenCV: pip install 'seglabel-client[dataset]' (opencv-python-headless)"
        ) from exc
    return cv2


def rle_of(counts: str, height: int, width: int) -> dict:
    return {"size": [height, width], "counts": counts.encode("ascii")}


def contours(mask: np.ndarray, tolerance: float) -> tuple[list[np.ndarray], bool]:
    """(outer contours as [n, 2] float pixel coordinates, whether the mask has holes). OpenCV's
    border following (RETR_CCOMP: outer boundaries and the holes inside them), simplified with
    Douglas-Peucker at ``tolerance`` pixels (0: every boundary pixel)."""
    cv2 = _cv2()
    found, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return [], False
    holes = bool((hierarchy[0][:, 3] >= 0).any())
    outer = []
    for c, h in zip(found, hierarchy[0]):
        if h[3] >= 0:
            continue
        if tolerance > 0:
            c = cv2.approxPolyDP(c, tolerance, True)
        if len(c) >= 3:
            outer.append(c.reshape(-1, 2).astype(np.float64))
    return outer, holes


def outline(mask: np.ndarray, tolerance: float = 1.0) -> list[np.ndarray]:
    """The mask's outer contours ([n, 2] x, y) at pixel centres, holes left out: the polygons a
    labelling tool draws a mask as."""
    outer, _ = contours(mask, tolerance)
    return [c + 0.5 for c in outer]


def polygons_rle(polys: list[list[float]], height: int, width: int) -> dict:
    mu = _mu()
    return mu.merge(mu.frPyObjects(polys, height, width))


def segmentation(counts: str, height: int, width: int, mask_format: str, tolerance: float):
    """(segmentation as written, its RLE for area/bbox, note): polygons in ``polygon`` mode when
    they redraw the mask with IoU >= POLYGON_MIN_IOU and it has no holes; RLE otherwise."""
    rle = rle_of(counts, height, width)
    if mask_format != "polygon":
        return {"size": [height, width], "counts": counts}, rle, None
    mu = _mu()
    outer, holes = contours(mu.decode(rle), tolerance)
    if holes:
        return {"size": [height, width], "counts": counts}, rle, "holes"
    polys = [(c + 0.5).ravel().round(2).tolist() for c in outer]  # pixel centres
    if not polys:
        return {"size": [height, width], "counts": counts}, rle, "too small for a polygon"
    drawn = polygons_rle(polys, height, width)
    iou = float(mu.iou([drawn], [rle], [0])[0][0])
    if iou < POLYGON_MIN_IOU:
        return {"size": [height, width], "counts": counts}, rle, f"polygon IoU {iou:.2f}"
    return polys, drawn, None


def yolo_polygon(counts: str, height: int, width: int, tolerance: float) -> list[float]:
    """The mask's largest outer contour, normalised to [0, 1] (x / width, y / height): YOLO-seg
    has one polygon per object and no holes. Empty when the mask has no contour of 3 points."""
    mu = _mu()
    outer, _ = contours(mu.decode(rle_of(counts, height, width)), tolerance)
    if not outer:
        return []
    cv2 = _cv2()
    best = max(outer, key=lambda c: cv2.contourArea(c.astype(np.float32)))
    xy = (best + 0.5) / np.array([width, height], np.float64)
    return np.clip(xy, 0.0, 1.0).ravel().round(6).tolist()


def image_record(resp, sha: str, options) -> dict:
    """A SegmentResponse as the journal's record for one image: every kept mask with its label,
    written segmentation, area and bbox (and YOLO polygon, depth, text when asked)."""
    mu = _mu()
    h, w = resp.height, resp.width
    labels = {lab.mask_index: lab for lab in resp.labels}
    depth = {d.mask_index: d for d in resp.mask_depth}
    text = {t.mask_index: t for t in resp.mask_text}
    anns, dropped, kept_rle = [], 0, 0
    for m in resp.masks:
        lab = labels.get(m.index)
        if options.request.skip_labels:
            name, score = "object", float(m.predicted_iou)
        elif lab is None or (lab.label == "unknown" and "unknown" not in options.request.vocabulary):
            dropped += 1  # under --min-confidence (or no label): not a labelled object
            continue
        else:
            name, score = lab.label, float(lab.confidence)
        seg, rle, why = segmentation(m.rle.counts, h, w, options.mask_format, options.polygon_tolerance)
        kept_rle += why is not None
        area = int(mu.area(rle))
        if area == 0:
            dropped += 1
            continue
        ann = {
            "label": name,
            "segmentation": seg,
            "area": area,
            "bbox": [round(float(v), 2) for v in mu.toBbox(rle)],
            "score": round(score, 6),
            "predicted_iou": round(float(m.predicted_iou), 6),
        }
        if "yolo-seg" in options.formats:
            ann["yolo"] = yolo_polygon(m.rle.counts, h, w, options.polygon_tolerance)
        if m.index in depth:
            ann["depth"] = {"median": depth[m.index].median, "rank": depth[m.index].rank}
        if m.index in text:
            ann["text"] = text[m.index].text
        anns.append(ann)
    return {
        "sha": sha,
        "ok": True,
        "width": w,
        "height": h,
        "anns": anns,
        "dropped": dropped,
        "rle_kept": kept_rle,
    }
