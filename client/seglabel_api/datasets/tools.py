"""A labelling job's outputs for the labelling tools, written from the journal like COCO: Label
Studio tasks with their predictions (importable as they are, with the labeling config to create
the project with), CVAT for images 1.1 XML, and the images' list most doubtful first."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from seglabel_api.datasets import annotations as records
from seglabel_api.datasets.files import Inventory
from seglabel_api.datasets.journal import Journal
from seglabel_api.datasets.writers import _atomic_text, _records, done_images
from seglabel_api.formats import cvat
from seglabel_api.formats import labelstudio as ls

LS_TASKS, LS_CONFIG, CVAT_XML, ORDER = (
    "label-studio-tasks.json",
    "label-studio-config.xml",
    "cvat.xml",
    "images-by-uncertainty.txt",
)
LOCAL_FILES = "/data/local-files/?d="  # Label Studio's local storage route


def _mask(seg, h: int, w: int) -> np.ndarray:
    mu = records._mu()
    if isinstance(seg, dict):
        return mu.decode(records.rle_of(seg["counts"], h, w)).astype(bool)
    return mu.decode(records.polygons_rle(seg, h, w)).astype(bool)


def image_score(rec: dict) -> float:
    """An image's score for sorting: the mean label confidence of its objects (0 with none)."""
    return ls.task_score([a["score"] for a in rec.get("anns", [])])


def label_studio_config(categories: list[str], polygons: bool) -> str:
    tag = "PolygonLabels" if polygons else "BrushLabels"
    labels = "".join(f"\n    <Label value={quoteattr(c)}/>" for c in categories)
    return (f'<View>\n  <Image name="image" value="$image" zoom="true"/>\n  <{tag} name="label" toName="image">'
            f"{labels}\n  </{tag}>\n</View>\n")  # fmt: skip


def write_label_studio(out: Path, inv: Inventory, journal: Journal, categories: list[str], model_version: str,
                       url_prefix: str = LOCAL_FILES, order: list[str] | None = None) -> int:  # fmt: skip
    """``label-studio-tasks.json`` (one task per labelled image, ``data.image`` = ``url_prefix`` +
    its path, its masks as a prediction: brush RLE, or polygons in polygon mode) and the labeling
    config they fit. Returns the number of regions."""
    labels = tuple(categories)  # the tags of label_studio_config's config
    brush = ls.Control("BrushLabels", "brushlabels", "label", "image", "image", labels)
    polygon = ls.Control("PolygonLabels", "polygonlabels", "label", "image", "image", labels)
    tasks: dict[str, dict] = {}
    n = 0
    for _, name, rec in _records(journal, done_images(inv, journal)):
        h, w = rec["height"], rec["width"]
        regions = []
        for k, ann in enumerate(rec["anns"]):
            seg = ann["segmentation"]
            if isinstance(seg, dict):
                regions += ls.regions(
                    brush, _mask(seg, h, w), ann["bbox"], ann["label"], ann["score"], f"r{k}"
                )
            else:
                polys = [np.asarray(p, np.float64).reshape(-1, 2) for p in seg]
                regions += ls.regions(polygon, np.zeros((h, w), bool), ann["bbox"], ann["label"], ann["score"],
                                      f"r{k}", polys)  # fmt: skip
        n += len(regions)
        tasks[name] = {
            "data": {"image": url_prefix + urllib.parse.quote(name)},
            "predictions": [{"model_version": model_version, "score": image_score(rec), "result": regions}],
        }
    names = order if order is not None else sorted(tasks)
    _atomic_text(
        out / LS_TASKS, json.dumps([tasks[k] for k in names if k in tasks], ensure_ascii=False) + "\n"
    )
    any_polygons = any(
        r["type"] == "polygonlabels" for t in tasks.values() for r in t["predictions"][0]["result"]
    )
    _atomic_text(out / LS_CONFIG, label_studio_config(categories, polygons=any_polygons))
    return n


def write_cvat(path: Path, inv: Inventory, journal: Journal, categories: list[str], name: str) -> int:
    """CVAT for images 1.1 XML: every labelled image with its masks (``<mask>``, RLE over the box)
    or, in polygon mode, polygons; the labels in the meta block. Returns the number of shapes."""
    images = done_images(inv, journal)
    lines = ['<?xml version="1.0" encoding="utf-8"?>', "<annotations>", "  <version>1.1</version>", "  <meta>",
             "    <task>", f"      <name>{_text(name)}</name>", f"      <size>{len(images)}</size>",
             "      <mode>annotation</mode>", "      <labels>"]  # fmt: skip
    for c in categories:
        lines.append(
            f"        <label><name>{_text(c)}</name><type>any</type><attributes></attributes></label>"
        )
    lines += ["      </labels>", "    </task>", "  </meta>"]
    n = 0
    for k, (_, fname, rec) in enumerate(_records(journal, images)):
        h, w = rec["height"], rec["width"]
        lines.append(f'  <image id={quoteattr(str(k))} name={quoteattr(fname)} width="{w}" height="{h}">')
        for ann in rec["anns"]:
            seg, label = ann["segmentation"], quoteattr(ann["label"])
            if isinstance(seg, dict):
                mask = _mask(seg, h, w)
                box = cvat.mask_box(mask)
                if box is None:
                    continue
                runs = ", ".join(map(str, cvat.mask_runs(mask, box)))
                left, top, right, bottom = box
                lines.append(f'    <mask label={label} source="auto" occluded="0" rle="{runs}" left="{left}" '
                             f'top="{top}" width="{right - left + 1}" height="{bottom - top + 1}" z_order="0">'
                             "</mask>")  # fmt: skip
                n += 1
            else:
                for poly in seg:
                    pts = ";".join(f"{x:.2f},{y:.2f}" for x, y in np.asarray(poly).reshape(-1, 2))
                    lines.append(f'    <polygon label={label} source="auto" occluded="0" points="{pts}" z_order="0">'
                                 "</polygon>")  # fmt: skip
                    n += 1
        lines.append("  </image>")
    lines.append("</annotations>")
    _atomic_text(path, "\n".join(lines) + "\n")
    return n


def _text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def uncertainty_order(inv: Inventory, journal: Journal) -> list[tuple[str, float]]:
    """(image name, score) of every labelled image, the most doubtful (lowest score) first."""
    scored = [(image_score(rec), name) for _, name, rec in _records(journal, done_images(inv, journal))]
    return [(name, s) for s, name in sorted(scored)]


def write_order(path: Path, order: list[tuple[str, float]]) -> None:
    _atomic_text(path, "".join(f"{name}\t{score:.6f}\n" for name, score in order))
