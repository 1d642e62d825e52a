"""The original application's analysis helpers, on the labels of a SegmentResponse (or any objects with
``label``, ``confidence`` and ``mask_index``)."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np


def group_by_label(labels) -> dict[str, list]:
    """label -> its labels (each with mask_index and confidence), most confident first."""
    groups: dict[str, list] = defaultdict(list)
    for lab in labels:
        groups[lab.label].append(lab)
    return {k: sorted(v, key=lambda lab: -lab.confidence) for k, v in groups.items()}


def high_confidence(labels, threshold: float = 0.5) -> list:
    """Labels whose confidence is at least ``threshold``, most confident first."""
    return sorted((lab for lab in labels if lab.confidence >= threshold), key=lambda lab: -lab.confidence)


def most_common_labels(labels, n: int = 5) -> list[tuple[str, int]]:
    """The ``n`` most frequent labels with their counts."""
    return Counter(lab.label for lab in labels).most_common(n)


def decode_mask(mask) -> np.ndarray:
    """A response's Mask (COCO RLE) -> [H, W] bool array."""
    from pycocotools import mask as mask_utils

    rle = {"size": list(mask.rle.size), "counts": mask.rle.counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def scene_summary(resp) -> str:
    """A SegmentResponse made with ``with_depth`` and/or ``with_text`` as the seed application's
    "comprehensive scene understanding": objects front to back (by their median depth) with their
    label and the text on them, then the text found outside every object."""
    labels = {lab.mask_index: lab for lab in resp.labels}
    depth = {d.mask_index: d for d in resp.mask_depth}
    text = {t.mask_index: t for t in resp.mask_text}
    indices = [m.index for m in resp.masks] or sorted(set(labels) | set(depth) | set(text))
    if depth:
        indices.sort(key=lambda i: depth[i].rank if i in depth else len(depth))
    lines = [f"Scene: {len(indices)} objects" + (", front to back" if depth else "")]
    for n, i in enumerate(indices, 1):
        lab = labels.get(i)
        what = f"{lab.label} ({lab.confidence:.2f})" if lab else f"mask {i}"
        parts = [f"{n:>3}. {what}"]
        if i in depth:
            d = depth[i]
            parts.append(f"depth {d.median:.3g} (min {d.min:.3g}, max {d.max:.3g})")
        if text.get(i) and text[i].text:
            parts.append(f'text: "{text[i].text}"')
        lines.append(", ".join(parts))
    if resp.HasField("text"):
        inside = {j for t in resp.mask_text for j in t.line_indices}
        outside = [ln.text for j, ln in enumerate(resp.text.lines) if j not in inside]
        lines.append(
            f"Text: {len(resp.text.lines)} lines"
            + (f"; outside every object: {' | '.join(outside)}" if outside else "")
        )
    for what, why in (("depth", resp.depth_unavailable_reason), ("text", resp.text_unavailable_reason)):
        if why:
            lines.append(f"({what} unavailable: {why})")
    return "\n".join(lines)
