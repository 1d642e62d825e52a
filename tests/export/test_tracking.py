"""The tracking loop end to end against sam2's own ``SAM2VideoPredictor`` (issue 34): the same
(random, tiny) weights, the same JPEG frames read as its video loader reads them, 30 frames, two
objects prompted on frame 0 (a box, a click) and a third clicked on a later frame; per object, mean
mask IoU over its frames >= 0.99 and the same object-present decisions. Run on the torch modules
and on their ONNX exports under ONNX Runtime. Random weights make the tracks meaningless; the
equality is what is proved."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from seglabel_export.exporter import _export_graph
from seglabel_server.models.images import video_preprocess
from seglabel_server.models.kinds.sam2 import ENCODER_OUTPUTS
from seglabel_server.models.torch_modules.modules import Sam2ImageEncoder
from seglabel_server.models.torch_modules.video import (
    Sam2MemoryConditioner,
    Sam2MemoryEncoder,
    Sam2TrackDecoder,
)
from seglabel_server.pipeline.tracker import Prompt, TrackSession, from_bf16, to_bf16

from tests.export.video_models import LAST_FRAME, track_config, video_predictor

FRAMES, LATER = 30, 12
H, W = 72, 96
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PROMPTS = {
    0: [Prompt(1, box=(8, 10, 34, 30)), Prompt(2, points=[(62, 44)], labels=[1])],
    LATER: [Prompt(3, points=[(50, 20)], labels=[1])],
}


def write_frames(folder) -> list[np.ndarray]:
    """Shapes moving over a noisy background, as JPEG files named as sam2's loader wants."""
    rng = np.random.default_rng(0)
    base = rng.integers(60, 120, (H, W, 3), dtype=np.uint8)
    frames = []
    for t in range(FRAMES):
        f = base.copy()
        f[10 + t // 3 : 30 + t // 3, 8 + t : 34 + t] = (220, 40, 40)
        yy, xx = np.mgrid[:H, :W]
        f[(yy - 44 - t // 2) ** 2 + (xx - 62) ** 2 < 81] = (40, 60, 230)
        if t >= LATER - 2:
            f[14:28, 44 + t - LATER : 58 + t - LATER] = (40, 200, 60)
        Image.fromarray(f).save(folder / f"{t:05d}.jpg", quality=95)
        frames.append(np.asarray(Image.open(folder / f"{t:05d}.jpg").convert("RGB")))
    return frames


class TorchModels:
    """The video path's torch modules, called directly (the served path goes through the scheduler)."""

    def __init__(self, model):
        self.parts = (Sam2ImageEncoder(model).eval(), Sam2MemoryConditioner(model).eval(),
                      Sam2TrackDecoder(model).eval(), Sam2MemoryEncoder(model).eval())  # fmt: skip

    @staticmethod
    def _call(module, feeds):
        with torch.no_grad():
            out = module(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
        return out.numpy() if isinstance(out, torch.Tensor) else [o.numpy() for o in out]

    async def encode(self, pixels):
        return dict(zip(ENCODER_OUTPUTS, self._call(self.parts[0], {"images": pixels})))

    async def condition(self, feeds):
        return self._call(self.parts[1], feeds)

    async def decode(self, feeds):
        return self._call(self.parts[2], feeds)

    async def encode_memory(self, feeds):
        return self._call(self.parts[3], feeds)


class OnnxModels(TorchModels):
    """The same four graphs exported (opset 17, objects / memory frames / pointers as dynamic
    axes), run by ONNX Runtime."""

    def __init__(self, model, folder):
        tm = TorchModels(model)
        s, side = model.image_size, model.image_size // model.backbone_stride
        c, cm = model.hidden_dim, model.mem_dim
        r = torch.randn
        embed = {"image_embed": r(1, c, side, side), "rows": torch.zeros(2, dtype=torch.int64)}
        examples = [
            ({"images": r(1, 3, s, s)}, {"images": {0: "b"}}),
            ({**embed, "memory": r(2, 3, cm, side, side), "memory_tpos": torch.tensor([[0, 1, 2], [0, 2, 3]]),
              "memory_valid": torch.ones(2, 3), "ptrs": r(2, 2, c), "ptr_pos": r(2, 2), "ptr_valid": torch.ones(2, 2)},
             {"image_embed": {0: "f"}, "rows": {0: "b"}, "memory": {0: "b", 1: "m"}, "memory_tpos": {0: "b", 1: "m"},
              "memory_valid": {0: "b", 1: "m"}, "ptrs": {0: "b", 1: "n"}, "ptr_pos": {0: "b", 1: "n"}, "ptr_valid": {0: "b", 1: "n"}}),
            ({"image_embed": r(2, c, side, side), "high_res_feats_0": r(1, c // 8, 4 * side, 4 * side),
              "high_res_feats_1": r(1, c // 4, 2 * side, 2 * side), "rows": torch.zeros(2, dtype=torch.int64),
              "point_coords": r(2, 2, 2), "point_labels": torch.ones(2, 2, dtype=torch.int32),
              "mask_input": r(2, 1, 4 * side, 4 * side), "has_mask": torch.zeros(2)},
             {"image_embed": {0: "b"}, "high_res_feats_0": {0: "f"}, "high_res_feats_1": {0: "f"}, "rows": {0: "b"},
              "point_coords": {0: "b", 1: "p"}, "point_labels": {0: "b", 1: "p"}, "mask_input": {0: "b"}, "has_mask": {0: "b"}}),
            ({**embed, "mask_logits": r(2, 1, s // 4, s // 4), "object_score": r(2, 1), "from_points": torch.zeros(2)},
             {"image_embed": {0: "f"}, "rows": {0: "b"}, "mask_logits": {0: "b"}, "object_score": {0: "b"}, "from_points": {0: "b"}}),
        ]  # fmt: skip
        self.sessions = []
        for i, (module, (example, axes)) in enumerate(zip(tm.parts, examples)):
            _export_graph(module, example, axes, folder / f"part{i}.onnx", 17)
            self.sessions.append(
                ort.InferenceSession(str(folder / f"part{i}.onnx"), providers=["CPUExecutionProvider"])
            )
        self.parts = self.sessions

    @staticmethod
    def _call(sess, feeds):
        names = {i.name for i in sess.get_inputs()}
        out = sess.run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in names})
        return out[0] if len(out) == 1 else out


def sams_run(predictor, folder) -> tuple[dict, dict]:
    """sam2's predictor as its README drives it: prompts on frame 0, propagate up to the later
    frame, the third object clicked there, propagate on. Returns {frame: {obj: mask logits at video
    size}} and {(frame, obj): object score logit}."""
    state = predictor.init_state(video_path=str(folder))
    masks: dict[int, dict[int, np.ndarray]] = {}
    for p in PROMPTS[0]:
        predictor.add_new_points_or_box(state, 0, p.obj_id, points=list(p.points) or None,
                                        labels=list(p.labels) or None, box=p.box)  # fmt: skip
    for t, ids, logits in predictor.propagate_in_video(state, max_frame_num_to_track=LATER - 1):
        masks[t] = {i: logits[j, 0].numpy() for j, i in enumerate(ids)}
    for p in PROMPTS[LATER]:
        predictor.add_new_points_or_box(state, LATER, p.obj_id, points=list(p.points), labels=list(p.labels))
    for t, ids, logits in predictor.propagate_in_video(state, start_frame_idx=LATER):
        masks[t] = {i: logits[j, 0].numpy() for j, i in enumerate(ids)}
    scores = {}
    for idx, out in state["output_dict_per_obj"].items():
        obj = state["obj_idx_to_id"][idx]
        for kind in ("cond_frame_outputs", "non_cond_frame_outputs"):
            for t, o in out[kind].items():
                scores[(t, obj)] = float(o["object_score_logits"].reshape(-1)[0])
    return masks, scores


def our_run(models, cfg, frames) -> tuple[dict, dict, list]:
    session = TrackSession(models, cfg, num_frames=len(frames))
    masks, scores, sizes = {}, {}, []

    async def go():
        for t, rgb in enumerate(frames):
            pix = video_preprocess(rgb, cfg.image_size, MEAN, STD)[None]
            answers = await session.step(t, pix, (H, W), PROMPTS.get(t, ()))
            up = torch.nn.functional.interpolate(torch.from_numpy(np.stack([a.logits for a in answers]))[:, None],
                                                 size=(H, W), mode="bilinear", align_corners=False)  # fmt: skip
            masks[t] = {a.obj_id: up[i, 0].numpy() for i, a in enumerate(answers)}
            scores.update({(t, a.obj_id): a.score for a in answers})
            sizes.append(session.state_bytes())

    asyncio.run(go())
    return masks, scores, sizes


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    frames = write_frames(folder)
    predictor = video_predictor()
    want = sams_run(predictor, folder)
    return predictor, folder, frames, want


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_tracking_equals_sam2_video_predictor(setup, engine, tmp_path):
    predictor, folder, frames, (want_masks, want_scores) = setup
    models = TorchModels(predictor) if engine == "torch" else OnnxModels(predictor, tmp_path)
    got_masks, got_scores, sizes = our_run(models, track_config(predictor), frames)
    assert set(got_masks) == set(want_masks) == set(range(FRAMES))
    for obj, first in ((1, 0), (2, 0), (3, LATER)):
        frames_of = range(first, FRAMES)
        assert all(obj in got_masks[t] for t in frames_of) and all(
            obj not in got_masks[t] for t in range(first)
        )
        ious = [iou(got_masks[t][obj] > 0, want_masks[t][obj] > 0) for t in frames_of]
        assert np.mean(ious) >= 0.99, (obj, np.round(ious, 3))
        # random weights give masks of about half the frame: the IoU compares real masks
        assert all(
            0.05 < (want_masks[t][obj] > 0).mean() < 0.95 for t in frames_of if want_scores[(t, obj)] > 0
        )
        present = [got_scores[(t, obj)] > 0 for t in frames_of]
        assert present == [want_scores[(t, obj)] > 0 for t in frames_of], obj
    assert any(v > 0 for v in want_scores.values()) and any(v <= 0 for v in want_scores.values()), (
        "both decisions"
    )
    # bounded: the state per object stops growing once the memory windows are full
    assert sizes[-1][1] == sizes[LAST_FRAME(predictor)][1]


def test_bf16_storage_rounds_as_torch():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 50
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    assert np.array_equal(from_bf16(to_bf16(x)), want)
