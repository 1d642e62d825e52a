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
