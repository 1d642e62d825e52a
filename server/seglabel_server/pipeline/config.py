"""The pipeline's defaults (a request's zero / unset means "use these") and limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from seglabel_server.models.vocab import DEFAULT_VOCABULARY, TEMPLATES


def _opt(default, help: str):
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"help": help}, **kw)


@dataclass
class PipelineConfig:
    """Thresholds follow sam2's automatic mask generator."""

    points_per_side: int = _opt(16, "GRID requests: points per side of the prompt grid")
    pred_iou_thresh: float = _opt(0.8, "GRID: keep masks whose predicted IoU is above this (0: off)")
    stability_score_thresh: float = _opt(0.95, "GRID: keep masks at least this stable (0: off)")
    box_nms_thresh: float = _opt(0.7, "GRID: box NMS IoU threshold (1: keep every box)")
    max_masks: int = _opt(100, "masks kept per request, best first")
    max_masks_limit: int = _opt(1000, "limit on a request's max_masks")
    top_k: int = _opt(3, "alternative labels per mask")
    crop_context: float = _opt(0.15, "CLIP crops: context around the mask's box, per side, as a fraction")
    crop_background_keep: float = _opt(0.2, "CLIP crops: how much of the background outside the mask stays")
    vocabulary: tuple[str, ...] = _opt(lambda: DEFAULT_VOCABULARY, "default labels (comma-separated)")
    templates: tuple[str, ...] = _opt(lambda: TEMPLATES, "prompt templates, each with one {}")
    max_points_per_side: int = _opt(64, "limit on a request's points_per_side")
    max_prompts: int = _opt(256, "limit on a request's points and boxes")
    max_vocabulary: int = _opt(1000, "limit on a request's vocabulary size")
    max_label_chars: int = _opt(100, "limit on one label's length")
    text_cache_size: int = _opt(32, "vocabularies whose text embeddings are kept")
    # rapidocr's default box threshold is 0.5; on scikit-image's page photo it dropped 2 of the 7
    # lines, which 0.3 keeps (each with recognition confidence > 0.9).
    text_box_thresh: float = _opt(
        0.3, "OCR: keep a detected text box whose mean probability is at least this"
    )
    text_min_confidence: float = _opt(0.5, "OCR: keep a line recognised with at least this confidence")
    max_track_sessions: int = _opt(4, "Track: sessions open at once (each holds its objects' memory)")
    max_track_objects: int = _opt(32, "Track: objects tracked at once in one session")
    track_idle_s: float = _opt(60.0, "Track: a session with no frame for this long is ended, its state freed")
    track_cond_frames: int = _opt(
        4, "Track: prompted frames kept per object (the first and the latest; sam2 keeps every one)"
    )
