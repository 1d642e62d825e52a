"""A CVAT interaction function backed by a seglabel server: the annotator's positive and negative
clicks and box become SAM2 point / box prompts; the image is uploaded once (``preprocess_image``,
which CVAT's agent caches per image) so every further click is answered from the server's cached
image embedding. The mask comes back in CVAT's mask format with SAM2's predicted IoU as its
confidence.

    cvat-cli function create-native "seglabel (SAM2)" --function-module seglabel_client.cvat.interactor \\
        -p server=str:127.0.0.1:50051
    cvat-cli function run-agent FUNCTION_ID --function-module seglabel_client.cvat.interactor -p server=str:...
"""

from __future__ import annotations

from seglabel_client.analysis import decode_mask
from seglabel_client.cvat import connect, image_bytes


class SeglabelInteractor:
    def __init__(self, server: str = "127.0.0.1:50051", token: str = "", tls_ca: str = ""):
        import cvat_sdk.auto_annotation as cvataa

        self.client = connect(server, token, tls_ca)
        # points and/or a box: SAM2 takes either, so none is required
        self.spec = cvataa.InteractionFunctionSpec(min_pos_points=0, min_neg_points=0, min_bounding_boxes=0)

    def preprocess_image(self, context, image) -> str:
        return self.client.upload(image_bytes(image)).file_id

    def detect(self, context, file_id: str, prompts) -> list:
        import cvat_sdk.auto_annotation as cvataa
        import cvat_sdk.models as models
        from cvat_sdk.masks import encode_mask

        points = [(x, y, 1) for x, y in prompts.pos_points] + [(x, y, 0) for x, y in prompts.neg_points]
        box = prompts.bounding_box
        if box is None and not points:
            return []
        kw = {"prompt_type": "box", "boxes": [(*box[0], *box[1])]} if box else {"prompt_type": "points"}
        resp = self.client.segment(file_id=file_id, points=points, skip_labels=True, overlay=False, **kw)
        if not resp.masks:
            return []
        m = max(resp.masks, key=lambda m: m.predicted_iou)
        mask = decode_mask(m)
        if not mask.any():
            return []
        confidence = models.AttributeValRequest(spec_id=cvataa.InteractionResultAttributes.CONFIDENCE,
                                                value=f"{min(max(m.predicted_iou, 0.0), 1.0):.6f}")  # fmt: skip
        return [cvataa.InteractionResultShape(type="mask", points=encode_mask(mask), attributes=[confidence])]


def create(**params) -> SeglabelInteractor:
    return SeglabelInteractor(**params)
