"""A CVAT auto-annotation (detection) function backed by a seglabel server: each frame's masks,
labelled with the vocabulary (``labels=str:a,b,c``, or a stored ``vocabulary=str:NAME``, or the
server's default vocabulary), confidence as the shape's ``score``. CVAT maps the function's labels
onto the task's by name (``--allow-unmatched-labels`` drops the others).

    cvat-cli task auto-annotate 12 --function-module seglabel_client.cvat.detector \\
        -p server=str:127.0.0.1:50051 -p labels=str:person,car -p points_per_side=int:32

Any Segment option of ``seglabel_api.options`` is a parameter by its name (``points_per_side``,
``min_confidence``, ``max_masks``, ...). ``--conv-mask-to-poly`` writes polygons (OpenCV contours)
instead of masks."""

from __future__ import annotations

import numpy as np
from seglabel_api import options as declared

from seglabel_client.analysis import decode_mask
from seglabel_client.cvat import connect, image_bytes


class SeglabelDetector:
    def __init__(self, server: str = "127.0.0.1:50051", labels: str = "", vocabulary: str = "", token: str = "",
                 tls_ca: str = "", **segment):  # fmt: skip
        import cvat_sdk.auto_annotation as cvataa

        self.client = connect(server, token, tls_ca)
        self.options = declared.from_kwargs(declared.SEGMENT, **segment)  # a wrong name fails here
        if labels:
            names: list[str] = list(declared.parse_csv(labels))
        elif vocabulary:
            names = [lab.label.name for lab in self.client.get_vocabulary(vocabulary).labels]
        else:
            names = list(self.client.server_info().default_vocabulary)
        self.labels, self.vocabulary = list(dict.fromkeys(names)), vocabulary
        self.spec = cvataa.DetectionFunctionSpec(
            labels=[cvataa.label_spec(name, i, type="mask") for i, name in enumerate(self.labels)]
        )

    def detect(self, context, image) -> list:
        import cvat_sdk.auto_annotation as cvataa
        from cvat_sdk.masks import encode_mask

        kw = {"vocabulary_name": self.vocabulary} if self.vocabulary else {"labels": self.labels}
        resp = self.client.segment(image=image_bytes(image), options=self.options, prompt_type="grid",
                                   overlay=False, **kw)  # fmt: skip
        ids = {name: i for i, name in enumerate(self.labels)}
        threshold = context.conf_threshold or 0.0
        labels = {lab.mask_index: lab for lab in resp.labels}
        shapes = []
        for m in resp.masks:
            lab = labels.get(m.index)
            if lab is None or lab.label not in ids or lab.confidence < threshold:
                continue
            mask = decode_mask(m)
            if not mask.any():
                continue
            score = float(lab.confidence)
            if context.conv_mask_to_poly:
                for poly in polygons(mask):
                    shapes.append(cvataa.polygon(ids[lab.label], poly, score=score))
            else:
                shapes.append(cvataa.mask(ids[lab.label], encode_mask(mask), score=score))  # box: the mask's
        return shapes


def polygons(mask: np.ndarray) -> list[list[float]]:
    """The mask's outer contours as CVAT polygon points (x1, y1, x2, y2, ...), pixel centres."""
    from seglabel_api.datasets.annotations import outline

    return [p.ravel().round(2).tolist() for p in outline(mask)]


def create(**params) -> SeglabelDetector:
    """What ``cvat-cli`` calls with the ``-p`` parameters."""
    return SeglabelDetector(**params)
