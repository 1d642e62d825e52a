"""Our grid pipeline against sam2's own SAM2AutomaticMaskGenerator, ONNX Runtime against torch,
and our labels against open_clip's zero-shot prediction."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from seglabel_export.reference import sam2_generator
from seglabel_server.backends import create_backend
from seglabel_server.models.repository import ModelRepository
from seglabel_server.models.vocab import TEMPLATES
from seglabel_server.types import SegmentOptions

from .conftest import crisp, decoded, pair_ious, rles, run_pipeline

GRID = 8


@pytest.fixture(scope="module")
def crisp_torch(tiny_repo):
    """Torch backend with crisp masks (conftest.crisp); sam2's generator below runs on this very
    model object."""
    return crisp(create_backend("torch", ModelRepository.load(tiny_repo)))


def reference(backend, image, iou, stab, nms):
    gen = sam2_generator(
        backend.mods["sam2_image_encoder"].model, GRID, iou, stab, nms, output_mode="coco_rle"
    )
    return [
        {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode("ascii")}
        for r in gen.generate(image)
    ]


@pytest.mark.parametrize(
    "iou,stab,nms,strict",
    [
        (0.0, 0.0, 1.0, True),  # every candidate: decode + upsample + RLE must agree mask for mask
        (0.7, 0.0, 1.0, True),  # predicted-IoU filter
        (0.6, 0.9, 0.7, True),  # sam2-like thresholds with box NMS
        (0.7, 0.9, 1.0, False),  # stability on low-res logits flips borderline masks: bounded, reported
    ],
)
def test_grid_matches_sam2_automatic_mask_generator(crisp_torch, tiny_repo, photo, iou, stab, nms, strict):
    ref = reference(crisp_torch, photo, iou, stab, nms)
    params = SegmentOptions(
        points_per_side=GRID,
        pred_iou_thresh=iou,
        stability_score_thresh=stab,
        box_nms_thresh=nms,
        max_masks=3 * GRID**2,  # every candidate (within the server's max_masks ceiling)
        skip_labels=True,
    )
    result, _ = run_pipeline(crisp_torch, tiny_repo, params, photo)
    ours = rles(result)
    assert len(ref) > 0 and len(ours) > 0
    diff = abs(len(ours) - len(ref))
    ious = pair_ious(ours, ref)
    print(
        f"iou>{iou} stab>={stab} nms {nms}: sam2 {len(ref)} masks, ours {len(ours)}, "
        f"mean paired IoU {ious.mean():.4f}"
    )
    if strict:
        assert diff <= max(1, 0.02 * len(ref))
        assert ious.mean() >= 0.99
    else:
        assert diff <= 0.10 * len(ref)
        assert ious.mean() >= 0.98


def test_onnxruntime_equals_torch(ort_backend, torch_backend, tiny_repo, photo):
    params = SegmentOptions(
        points_per_side=GRID,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        max_masks=40,
        top_k=3,
    )
    ours, _ = run_pipeline(ort_backend, tiny_repo, params, photo)
    ref, _ = run_pipeline(torch_backend, tiny_repo, params, photo)
    assert len(ours.masks) == len(ref.masks) == 40
    assert pair_ious(rles(ours), rles(ref)).mean() >= 0.99
    assert [lab.label for lab in ours.labels] == [lab.label for lab in ref.labels]
    np.testing.assert_allclose(
        [lab.confidence for lab in ours.labels], [lab.confidence for lab in ref.labels], atol=1e-4
    )


def test_labels_equal_open_clip_zero_shot_on_the_same_crops(ort_backend, torch_backend, tiny_repo, photo):
    vocab = ("person", "dog", "sky", "flag", "rocket", "tree", "car")
    params = SegmentOptions(
        points_per_side=8,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        max_masks=24,
        vocabulary=vocab,
        top_k=2,
    )
    result, pipe = run_pipeline(ort_backend, tiny_repo, params, photo)
    masks = decoded(result)
    crops = torch.from_numpy(pipe.pipeline.mask_path.cut(photo, result.masks, masks))
    clip = torch_backend.mods["clip_image_encoder"].clip
    tok = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        img = clip.encode_image(crops, normalize=True)
        txt = torch.stack(
            [clip.encode_text(tok([t.format(v) for t in TEMPLATES]), normalize=True).mean(0) for v in vocab]
        )
        txt = txt / txt.norm(dim=-1, keepdim=True)
        probs = (clip.logit_scale.exp() * img @ txt.T).softmax(dim=-1)
    expected = [vocab[i] for i in probs.argmax(dim=-1).tolist()]
    assert [lab.label for lab in result.labels] == expected
    np.testing.assert_allclose(
        [lab.confidence for lab in result.labels], probs.max(dim=-1).values.numpy(), atol=1e-4
    )
    assert [lab.mask_index for lab in result.labels] == list(range(len(result.masks)))
    assert all(len(lab.top_k) == 2 and lab.top_k[0][0] == lab.label for lab in result.labels)


@pytest.mark.parametrize("graph", [False, True], ids=["reference", "exported-formulation"])
def test_decoder_wrapper_equals_sam2_predict_masks(torch_backend, graph):
    """Our single-image decoder (image side broadcast through the transformer), and the reordered
    formulation the ONNX graph is exported from, compute what sam2's MaskDecoder computes with
    repeat_image=True; min_iou keeps exactly the prompts whose best multimask IoU is above it."""
    from seglabel_server.models.torch_modules.modules import Sam2MaskDecoderGraph

    sam = torch_backend.mods["sam2_image_encoder"].model
    wrapper = Sam2MaskDecoderGraph(sam).eval() if graph else torch_backend.mods["sam2_mask_decoder"]
    s = sam.image_size
    torch.manual_seed(0)
    with torch.no_grad():
        emb, f0, f1 = torch_backend.mods["sam2_image_encoder"](torch.randn(1, 3, s, s))
        coords = torch.rand(9, 2, 2) * s
        labels = torch.tensor([[1, 0]] * 5 + [[2, 3]] * 4, dtype=torch.int32)
        iou, kept, masks, _, single, single_iou = wrapper(
            emb, f0, f1, coords, labels, torch.tensor([float("-inf")])
        )
        assert kept.tolist() == list(range(9))
        sparse, dense = sam.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        for multimask, (m, i) in ((True, (masks, iou)), (False, (single, single_iou))):
            ref_m, ref_i, _, _ = sam.sam_mask_decoder(
                image_embeddings=emb,
                image_pe=sam.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                repeat_image=True,
                high_res_features=[f0, f1],
            )
            torch.testing.assert_close(m, ref_m, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(i, ref_i, rtol=1e-4, atol=1e-4)
        best = iou.max(dim=1).values
        cut = best.sort().values[4:6].mean()  # between the 5th and 6th best IoU: keeps 4
        iou2, kept2, masks2, stab2, single2, single_iou2 = wrapper(emb, f0, f1, coords, labels, cut[None])
        assert kept2.tolist() == torch.nonzero(best > cut).reshape(-1).tolist() and len(kept2) == 4
        torch.testing.assert_close(iou2, iou)
        torch.testing.assert_close(masks2, masks[kept2], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(single2, single[kept2], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(single_iou2, single_iou[kept2])
        assert stab2.shape == (4, 3)


def test_box_prompts_match_sam2_image_predictor(crisp_torch, tiny_repo, photo):
    """Each box's mask, in the request's order, is the single mask sam2's own SAM2ImagePredictor
    gives for that box alone; a point inside the box refines it as sam2 does."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    sam = crisp_torch.mods["sam2_image_encoder"].model
    predictor = SAM2ImagePredictor(sam)
    s = sam.image_size
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    predictor.set_image(photo)
    h, w = photo.shape[:2]
    boxes = [
        (10.0, 20.0, w * 0.5, h * 0.6),
        (w * 0.4, h * 0.3, w - 5.0, h - 8.0),
        (0.0, 0.0, w * 0.3, h * 0.2),
    ]
    params = SegmentOptions(prompt_type="box", boxes=tuple(boxes), skip_labels=True)
    result, _ = run_pipeline(crisp_torch, tiny_repo, params, photo)
    ours = decoded(result)
    assert len(ours) == len(boxes)
    for box, mask in zip(boxes, ours):
        ref, _, _ = predictor.predict(box=np.array(box), multimask_output=False)
        assert pair_ious([mask], [ref[0] > 0])[0] >= 0.99, box
    # a box with a positive point: the same prompt sam2 takes (box corners, then the point)
    point = (w * 0.2, h * 0.3)
    params = SegmentOptions(prompt_type="box", boxes=(boxes[0],), points=((*point, 1),), skip_labels=True)
    result, _ = run_pipeline(crisp_torch, tiny_repo, params, photo)
    ref, _, _ = predictor.predict(point_coords=np.array([point]), point_labels=np.array([1]), box=np.array(boxes[0]),
                                  multimask_output=False)  # fmt: skip
    assert pair_ious(decoded(result), [ref[0] > 0])[0] >= 0.99
