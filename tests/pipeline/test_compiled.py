"""Compiled torch engines (backends/torch_compile.py): bucket padding gives the unpadded results,
and inductor-compiled engines match eager ones, on CPU torch (a GPU adds CUDA graphs: not run here)."""

from __future__ import annotations

import numpy as np
import pytest
from seglabel_export.parity import rel_l2
from seglabel_server.backends import create_backend, torch_compile
from seglabel_server.models import images
from seglabel_server.models.kinds import clip, sam2
from seglabel_server.models.repository import ModelRepository

pytestmark = pytest.mark.slow  # torch.compile of every bucket

MODELS = ["sam2_image_encoder", "sam2_mask_decoder", "clip_image_encoder"]


def test_buckets():
    assert torch_compile.buckets(32) == [1, 2, 4, 8, 16, 32]
    assert torch_compile.buckets(100, 16) == [16, 32, 64, 128]
    assert torch_compile.bucket_for(17, [16, 32]) == 32 and torch_compile.bucket_for(70, [16, 32]) == 128


@pytest.fixture(scope="module")
def eager(tiny_repo):
    return create_backend(
        "torch", ModelRepository.load(tiny_repo), decoder_layout="multi-image", models=MODELS
    )


def features(backend, photo, repo, n=1):
    s, meta = repo.sam2["image_size"], repo.sam2
    x = images.sam_preprocess(photo, s, meta["pixel_mean"], meta["pixel_std"])[None]
    return sam2.encode(backend, np.concatenate([x, x[:, :, ::-1].copy()][:n]))


def test_bucket_padding_changes_no_result(tiny_repo, eager, photo, monkeypatch):
    """Compiled as the identity (no torch.compile): padded prompts, padded images and padded kept
    rows are cut off again, and every request size gives the unpadded module's outputs."""
    monkeypatch.setattr(torch_compile, "_compile", lambda fn, mode: fn)
    repo = ModelRepository.load(tiny_repo)
    padded = create_backend(
        "torch",
        repo,
        compile_mode="default",
        models=MODELS,
        max_batches={"sam2_mask_decoder": 32, "clip_image_encoder": 8},
    )
    assert isinstance(padded.mods["sam2_mask_decoder"], torch_compile.CompiledDecoder)
    assert padded.mods["sam2_mask_decoder"].sizes == [16, 32]
    f_eager, f_pad = features(eager, photo, repo, 2), features(padded, photo, repo, 2)
    assert rel_l2(f_pad[1].arrays["image_embed"].numpy(), f_eager[1].arrays["image_embed"].numpy()) < 1e-6
    rng = np.random.default_rng(0)
    s = repo.sam2["image_size"]
    for n in (1, 5, 16, 17, 40):
        coords = rng.uniform(0, s, (n, 2, 2)).astype(np.float32)
        labels = np.ones((n, 2), np.int32)
        ref = sam2.decode(eager, f_eager[0], coords, labels)
        cut = float(np.median(ref.iou.max(axis=1)))
        for min_iou in (float("-inf"), cut):
            a = sam2.decode(eager, f_eager[0], coords, labels, min_iou)
            b = sam2.decode(padded, f_pad[0], coords, labels, min_iou)
            assert b.kept.tolist() == a.kept.tolist() and b.iou.shape == (n, 3)
            assert rel_l2(b.iou, a.iou) < 1e-5
            if len(a.kept):
                assert rel_l2(b.masks.numpy(), a.masks.numpy()) < 1e-5
        # two images in one call, padded to the image bucket (4 of 2 used by 3)
        reqs = [
            sam2.DecodeRequest(f, coords[i::3], labels[i::3], float("-inf"), True)
            for i, f in enumerate([f_pad[0], f_pad[1], f_pad[0]])
            if len(coords[i::3])
        ]
        for r, got in zip(reqs, sam2.DECODER.execute(padded, reqs)):
            ref = sam2.decode(eager, f_eager[0 if r.features is f_pad[0] else 1], r.coords, r.labels)
            assert rel_l2(got.masks.numpy(), ref.masks.numpy()) < 1e-5
    crops = rng.standard_normal((3, 3, 224, 224)).astype(np.float32)  # bucket 4
    a, b = clip.IMAGE.execute(eager, [crops])[0], clip.IMAGE.execute(padded, [crops])[0]
    assert b.shape == a.shape and rel_l2(b, a) < 1e-5


def test_compiled_engines_match_eager_and_answer_equal_on_both_photos(tiny_repo, eager, photo):
    """Every model compiled by inductor (C++ on the CPU: SAM2 encoder and decoder, CLIP image and
    text towers; small buckets so the CPU compiles them in seconds), every bucket compiled by
    warm_up before use: the encoder's and decoder's outputs against eager (rel L2), then end to end
    on both bundled photos against the eager fp32 pipeline: matched-mask mIoU and identical labels."""
    import asyncio

    from seglabel_client import sample_image_bytes
    from seglabel_server.service import build_pipeline
    from seglabel_server.service.config import ServerConfig
    from seglabel_server.types import RequestContext, SegmentOptions

    from .conftest import pair_ious, rles

    repo = ModelRepository.load(tiny_repo)
    models = MODELS + ["clip_text_encoder"]
    sizes = {"encoder": 1, "decoder": 16, "clip": 1, "text": 1}
    cfg = ServerConfig(max_batch=sizes, max_queue=4096)  # the vocabulary, one text per batch
    compiled = create_backend(
        "torch",
        repo,
        compile_mode="default",
        models=models,
        max_batches={
            "sam2_image_encoder": 1,
            "sam2_mask_decoder": 16,
            "clip_image_encoder": 1,
            "clip_text_encoder": 1,
        },
    )
    graphs, seconds = compiled.warm_up()
    print(f"all four models: {graphs} bucket graphs in {seconds:.1f}s")
    assert graphs == 4  # one bucket each: encoder 1, decoder 16 (both parts), CLIP image and text 1
    fa, fb = features(eager, photo, repo), features(compiled, photo, repo)
    err = rel_l2(fb[0].arrays["image_embed"].numpy(), fa[0].arrays["image_embed"].numpy())
    coords = np.random.default_rng(1).uniform(0, repo.sam2["image_size"], (12, 1, 2)).astype(np.float32)
    labels = np.ones((12, 1), np.int32)
    a, b = sam2.decode(eager, fa[0], coords, labels), sam2.decode(compiled, fb[0], coords, labels)
    print(f"rel L2: image_embed {err:.1e}, masks {rel_l2(b.masks.numpy(), a.masks.numpy()):.1e}")
    assert err < 1e-4 and b.kept.tolist() == a.kept.tolist()
    assert rel_l2(b.masks.numpy(), a.masks.numpy()) < 1e-4 and rel_l2(b.iou, a.iou) < 1e-4
    eager_be = create_backend("torch", repo, models=models)
    params = SegmentOptions(
        points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1.0, max_masks=12
    )
    for name in ("astronaut.jpg", "coffee.jpg"):
        image = images.decode_image(sample_image_bytes(name))
        results = []
        for be in (eager_be, compiled):
            pipe = build_pipeline(be, repo, cfg)
            try:
                results.append(asyncio.run(pipe.run(params, image, RequestContext())))
            finally:
                pipe.close()
        ref, ours = results
        miou = pair_ious(rles(ours), rles(ref)).mean()
        print(f"{name}: {len(ours.masks)} masks, matched mIoU {miou:.4f}")
        assert len(ours.masks) == len(ref.masks) == 12 and miou >= 0.99
        assert [lab.label for lab in ours.labels] == [lab.label for lab in ref.labels]
