"""A long stream in bounded memory (issue 34): 10,000 frames through one tracking session on the
tiny models' exported graphs under ONNX Runtime, objects added, removed and prompted again along
the way; the process's RSS stays within 10% of what it was after the first 100 frames, and the
state kept per object stops growing once its memory windows are full. sam2's predictor keeps every
frame's output (sam2#196); this is the difference."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from seglabel_export.video import export_video
from seglabel_server.backends.onnx_folder import OnnxFolderBackend
from seglabel_server.pipeline.track_models import DirectTrackModels
from seglabel_server.pipeline.tracker import Prompt, TrackSession

from tests.export.video_models import SMALLER, track_config, video_predictor

FRAMES = 10_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class FourFrames(DirectTrackModels):
    """The graphs, with the image encoder's outputs of four distinct frames computed once and
    reused as the stream cycles through them (what is measured is the session's state, not the
    encoder's time)."""

    def __init__(self, folder):
        super().__init__(OnnxFolderBackend(folder, threads=1))
        self.cache: dict[int, object] = {}

    async def encode(self, pixels):
        key = pixels.__array_interface__["data"][0]
        if key not in self.cache:
            self.cache[key] = await super().encode(pixels)
        return self.cache[key]


def events(t: int) -> tuple[list[Prompt], list[int]]:
    """(prompts, removals) on frame t: two objects from the start, a third from 2,000, the first
    removed at 4,000 and a new one at 6,000, the second prompted again every 1,500 frames."""
    click = lambda k, x: Prompt(k, points=[(x, 30.0)], labels=[1])  # noqa: E731
    prompts = {0: [click(1, 20), click(2, 60)], 2000: [click(3, 40)], 6000: [click(4, 70)]}.get(t, [])
    if t and t % 1500 == 0:
        prompts.append(click(2, 55))
    return prompts, [1] if t == 4000 else []


@pytest.mark.slow
def test_ten_thousand_frames_hold_rss_flat(tmp_path):
    predictor = video_predictor(extra=SMALLER)
    models = FourFrames(export_video(predictor, tmp_path))
    cfg = track_config(predictor)
    session = TrackSession(models, cfg)  # a live stream: its length unknown
    s = cfg.image_size
    frames = [np.random.default_rng(i).standard_normal((1, 3, s, s)).astype(np.float32) for i in range(4)]
    side = s // predictor.backbone_stride
    m = cfg.memory
    # the most an object can hold: its prompted frames and its memory window with features
    # (bfloat16), its pointer window with pointers only
    feats, ptr = 2 * predictor.mem_dim * side * side, 4 * predictor.hidden_dim
    windows = cfg.max_cond_frames + m.num_maskmem * m.stride
    bound = feats * windows + ptr * (windows + m.max_obj_ptrs)
    del predictor
    rss, state = {}, {}

    async def stream():
        for t in range(FRAMES):
            prompts, removals = events(t)
            for k in removals:
                assert session.remove(k)
            answers = await session.step(t, frames[t % 4], (72, 96), prompts)
            assert [a.obj_id for a in answers] == list(session.objects)
            if t % 100 == 0:
                rss[t], state[t] = rss_bytes(), session.state_bytes()

    asyncio.run(stream())
    base = rss[100]
    worst = max(v for t, v in rss.items() if t >= 100)
    assert worst <= 1.10 * base, f"RSS grew from {base / 2**20:.0f} MB to {worst / 2**20:.0f} MB"
    assert max(b for st in state.values() for b in st.values()) <= bound
    assert sorted(session.objects) == [2, 3, 4] and len(session.objects[2].cond) == cfg.max_cond_frames
