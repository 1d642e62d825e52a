"""The tests' tiny SAM2.1 with its video path (random weights), as the module tests and the
tracking loop's end-to-end test build it."""

from __future__ import annotations

import torch
from seglabel_export import sources
from seglabel_server.models.torch_modules.checkpoints import build_sam2
from seglabel_server.models.torch_modules.video import tracking_settings
from seglabel_server.pipeline.tracking import TrackConfig

TINY = list(sources.SAM2_TINY_OVERRIDES)


def randomise_zero_inits(m) -> None:
    """sam2 initialises the no-object and temporal embeddings to zero; random values make the
    tests see them."""
    with torch.no_grad():
        for name in ("no_obj_embed_spatial", "maskmem_tpos_enc"):
            t = getattr(m, name, None)
            if t is not None:
                t.normal_()


def tiny_video_model(seed: int, *extra: str):
    """The tests' tiny SAM2.1 with its video path and the video predictor's settings (``extra``:
    more overrides)."""
    torch.manual_seed(seed)
    spec = sources.Sam2Spec(source="tiny", architecture="tiny", config=sources.SAM2_CONFIGS["tiny"],
                            overrides=[*TINY, *sources.SAM2_VIDEO_OVERRIDES, *extra])  # fmt: skip
    m = build_sam2(spec)
    randomise_zero_inits(m)
    return m


def video_predictor(
    seed: int = 0, score_gain: float = 40.0, score_shift: float = 0.4, extra: tuple[str, ...] = ()
):
    """sam2's own ``SAM2VideoPredictor`` on the tiny architecture with sam2's 7 memory frames (its
    builder's settings, random weights). Random weights put every object's score near -0.2 (absent)
    on every frame; the object-score head's last layer scaled by ``score_gain`` and its bias moved
    by ``score_shift`` make both decisions occur in the test video (seed 0: object 2 absent on its
    prompted frame, present after; the smallest |score| 0.12, far above the implementations'
    differences)."""
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(seed)
    # sam2's 7 memory frames (the tiny image overrides keep 2)
    overrides = [*TINY, "++model.num_maskmem=7", *extra]
    p = build_sam2_video_predictor(
        sources.SAM2_CONFIGS["tiny"], None, device="cpu", hydra_overrides_extra=overrides
    )
    randomise_zero_inits(p)
    head = p.sam_mask_decoder.pred_obj_score_head
    last = head.layers[-1] if hasattr(head, "layers") else head
    with torch.no_grad():
        last.bias += score_shift
        last.weight *= score_gain
    return p


def track_config(model, **bounds) -> TrackConfig:
    return TrackConfig.from_settings(tracking_settings(model), **bounds)


def LAST_FRAME(model) -> int:  # noqa: N802
    """The frame after which an object's state stops growing (its windows full)."""
    return max(model.num_maskmem * model.memory_temporal_stride_for_eval, model.max_obj_ptrs_in_encoder) + 1


# The tiny model at 64 px (its memory attention's feature maps 4x4): the long-stream test's, 3.6 ms a
# frame against 17 at 256 px; what it measures (the session's state) does not depend on the size.
SMALLER = ("++model.image_size=64", "++model.memory_attention.layer.self_attention.feat_sizes=[4,4]",
           "++model.memory_attention.layer.cross_attention.feat_sizes=[4,4]")  # fmt: skip
