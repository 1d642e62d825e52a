"""The tracking session's host side without models: prompts checked and scaled as sam2 scales
them, sam2's multimask rule, bfloat16 storage, and the session's refusals (a model double that
records calls stands in for the graphs; what the graphs compute is proved in tests/export)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from seglabel_server.errors import InvalidArgument, LimitExceeded
from seglabel_server.pipeline.tracker import Prompt, TrackSession
from seglabel_server.pipeline.tracking import TrackConfig, from_bf16, to_bf16, use_multimask


def test_box_goes_first_and_coordinates_scale_to_the_model_square():
    coords, labels = Prompt(1, points=[(50, 25)], labels=[0], box=(10, 5, 90, 45)).model_points(100, 50, 1024)
    assert labels.tolist() == [2, 3, 0]
    assert np.allclose(coords, [[102.4, 102.4], [921.6, 921.6], [512, 512]])


@pytest.mark.parametrize(
    "prompt,message",
    [
        (Prompt(1), "points or a box"),
        (Prompt(1, points=[(1, 1)], labels=[]), "1 points but 0 labels"),
        (Prompt(1, points=[(1, 1)], labels=[2]), "labels are 1"),
        (Prompt(1, points=[(101, 1)], labels=[1]), "outside the 100x50 frame"),
        (Prompt(1, points=[(float("nan"), 1)], labels=[1]), "outside"),
        (Prompt(1, box=(50, 5, 10, 45)), "x0 < x1"),
    ],
)
def test_bad_prompts_are_the_callers_error(prompt, message):
    with pytest.raises(InvalidArgument, match=message):
        prompt.model_points(100, 50, 1024)


def test_sams_multimask_rule():
    cfg = TrackConfig(image_size=1024)
    assert use_multimask(cfg, True, 1) and not use_multimask(cfg, True, 2)  # one click; a box or two clicks
    assert use_multimask(cfg, False, 0)  # SAM2.1 tracks with several masks
    assert not use_multimask(TrackConfig(image_size=1024, multimask_for_tracking=False), False, 0)


def test_bfloat16_bits_round_trip_and_round_to_nearest_even():
    x = np.array([1.0, -2.5, 1 + 2**-8, 1 + 3 * 2**-8, 0.0], np.float32)
    assert from_bf16(to_bf16(x)).tolist() == [1.0, -2.5, 1.0, 1 + 4 * 2**-8, 0.0]


class NoModels:
    """Records that a model was called; never computes."""

    def __init__(self):
        self.calls = 0

    async def encode(self, pixels):
        self.calls += 1
        raise AssertionError("the session should refuse before running a model")

    condition = decode = encode_memory = encode


def test_session_refuses_before_running_any_model():
    models = NoModels()
    s = TrackSession(models, TrackConfig(image_size=64, max_objects=2))
    pix = np.zeros((1, 3, 64, 64), np.float32)
    click = lambda k: Prompt(k, points=[(1, 1)], labels=[1])  # noqa: E731
    with pytest.raises(LimitExceeded, match="at most 2 objects"):
        asyncio.run(s.step(0, pix, (10, 10), [click(1), click(2), click(3)]))
    with pytest.raises(InvalidArgument, match="one prompt per object"):
        asyncio.run(s.step(0, pix, (10, 10), [click(1), click(1)]))
    with pytest.raises(InvalidArgument, match="outside"):
        asyncio.run(s.step(0, pix, (10, 10), [Prompt(1, points=[(11, 1)], labels=[1])]))
    s.last_frame = 5
    with pytest.raises(InvalidArgument, match="frames go forward"):
        asyncio.run(s.step(5, pix, (10, 10)))
    assert models.calls == 0 and not s.objects and not s.remove(1)


def test_inbox_file_mode_holds_two_frames_and_live_mode_keeps_the_newest():
    from seglabel_server.service.tracking import FILE, LIVE, TrackFrame, _Inbox

    async def go():
        box = _Inbox(FILE)
        await box.put(TrackFrame(0, b""))
        await box.put(TrackFrame(1, b""))
        third = asyncio.create_task(box.put(TrackFrame(2, b"")))
        await asyncio.sleep(0.05)
        assert not third.done()  # a third frame waits: the reader (and the transport) is held
        assert (await box.get()).index == 0
        await asyncio.wait_for(third, 1)
        assert [(await box.get()).index for _ in range(2)] == [1, 2] and not box.dropped

        live = _Inbox(LIVE)
        prompted = TrackFrame(1, b"", prompts=[Prompt(1, points=[(1, 1)], labels=[1])])
        for f in (
            TrackFrame(0, b""),
            prompted,
            TrackFrame(2, b""),
            TrackFrame(3, b""),
            TrackFrame(4, b"", remove=[1]),
        ):
            await live.put(f)
        await live.put(TrackFrame(5, b""))
        got = [(await live.get()).index for _ in range(len(live.items))]
        return got, live.dropped

    got, dropped = asyncio.run(go())
    # frames with prompts or removals are never dropped; a plain frame is replaced by a newer one
    assert got == [1, 4, 5] and dropped == [0, 2, 3]
