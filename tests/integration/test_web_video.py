"""The page's video tab in a real browser (issue 34): the distribution's headless Chromium, driven
by Playwright against a live server on the tracking test's repository. A WebM file is chosen,
an object clicked on its first frame and refined with a second click, a second object started
there, the video tracked step by step, a track corrected by a click on the last frame; then the camera (Chromium's
fake device) sends its newest frames in live mode and a click starts a track on it. A screenshot
is left in test-output/web/."""

from __future__ import annotations

import numpy as np
import pytest

from tests.integration.conftest import metric
from tests.integration.test_track import FRAMES, H, W, tuned  # noqa: F401  (the fixture)
from tests.system import free_port, headless_chromium, output_dir

pytestmark = pytest.mark.slow  # a browser


def webm(path, n: int = FRAMES) -> None:
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(60, 120, (H, W, 3), dtype=np.uint8)
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for t in range(n):
            f = base.copy()
            f[10 + t // 3 : 30 + t // 3, 8 + t : 34 + t] = (220, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture
async def browser():
    fake = (
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
    )
    async with headless_chromium(*fake) as b:
        yield b


async def coloured(page) -> int:
    return await page.evaluate(
        """() => { const c = document.getElementById('video-overlay');
                  if (!c.width) return 0;
                  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""
    )


async def test_the_video_tab_tracks_a_file_and_the_camera(make_server, browser, tuned, tmp_path):  # noqa: F811
    _, repo, _ = tuned
    port = free_port()
    server = await make_server(repo=repo, http_port=port)
    video = tmp_path / "clip.webm"
    webm(video)
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(f"http://127.0.0.1:{port}/")
    await page.fill("#vocabulary", "red box, blue disc")
    await page.set_input_files("#video-file", str(video))
    await page.wait_for_function(
        "document.getElementById('video-status').textContent.includes('click an object')"
    )

    # a click on the first frame starts track 1 there and shows it at once
    await page.locator("#video-overlay").scroll_into_view_if_needed()
    box = await page.locator("#video-overlay").bounding_box()
    await page.mouse.click(box["x"] + box["width"] * 20 / W, box["y"] + box["height"] * 20 / H)
    await page.wait_for_function("window.seglabelVideo.answers >= 1")
    first = await page.evaluate("window.seglabelVideo.last")
    assert [o["object_id"] for o in first["objects"]] == [1] and first["objects"][0]["prompted"]

    async def click(x, y, shift=False):
        box = await page.locator("#video-overlay").bounding_box()
        if shift:
            await page.keyboard.down("Shift")
        await page.mouse.click(box["x"] + box["width"] * x / W, box["y"] + box["height"] * y / H)
        if shift:
            await page.keyboard.up("Shift")

    # paused on frame 0: a second click refines track 1 there (no image sent again, no new frame);
    # New object, then a click starts track 2 on the same frame
    await click(30, 25)
    await page.wait_for_function("window.seglabelVideo.corrections === 1")
    state = await page.evaluate("window.seglabelVideo")
    assert state["answers"] == 1 and state["last"]["frame_index"] == 0 and len(state["clicks"]["1"]) == 2
    assert [o["object_id"] for o in state["last"]["objects"]] == [1] and state["last"]["objects"][0][
        "prompted"
    ]
    assert state["last"]["objects"][0]["rle"] != first["objects"][0]["rle"]
    await page.click("#video-new")
    await click(62, 44)
    await page.wait_for_function("window.seglabelVideo.corrections === 2")
    state = await page.evaluate("window.seglabelVideo")
    assert [o["object_id"] for o in state["last"]["objects"]] == [1, 2] and state["last"]["frame_index"] == 0

    # Track: the file stepped through at 5 frames/s of its 1.2 s; every step answered in order
    await page.click("#video-track")
    await page.wait_for_function(
        "document.getElementById('video-status').textContent.startsWith('done')", timeout=60000
    )
    state = await page.evaluate("window.seglabelVideo")
    assert state["answers"] >= 6 and state["last"]["frame_index"] == state["answers"] - 1
    assert [o["object_id"] for o in state["last"]["objects"]] == [1, 2]
    present = any(o["present"] and o["area"] for o in state["last"]["objects"])
    assert (await coloured(page) > 0) == present  # the masks are drawn where the tracks are on the frame
    assert await page.locator("#tracks tbody tr").count() == 2
    await page.screenshot(path=str(output_dir("web") / "video.png"))

    # paused on the last frame: a shift+click inside a track's mask corrects that track there
    target = await page.evaluate(
        """() => { for (const o of window.seglabelVideo.last.objects) {
                     if (!o.present || !o.area) continue;
                     const p = window.seglabelPage.decodeRle(o.rle).pixels;
                     const q = p[Math.floor(p.length / 2)], w = window.seglabelVideo.last.width;
                     return [o.object_id, q % w + 0.5, Math.floor(q / w) + 0.5]; }
                   return null; }"""
    )
    assert target is not None, "a track on the last frame to correct"
    await click(target[1], target[2], shift=True)
    await page.wait_for_function("window.seglabelVideo.corrections === 3")
    after = await page.evaluate("window.seglabelVideo.last")
    assert after["frame_index"] == state["last"]["frame_index"]
    assert [o["prompted"] for o in after["objects"]] == [
        o["object_id"] == target[0] for o in after["objects"]
    ]

    # the camera: live, its newest frame whenever the previous answer is back; a click adds a track
    await page.click("#video-camera")
    await page.wait_for_function(
        "window.seglabelVideo.camera && window.seglabelVideo.answers >= 3", timeout=60000
    )
    await page.locator("#video-overlay").scroll_into_view_if_needed()
    box = await page.locator("#video-overlay").bounding_box()
    await page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.wait_for_function("window.seglabelVideo.last.objects.length === 1", timeout=60000)
    await page.click("#video-pause")
    await page.wait_for_function("!window.seglabelVideo.sid", timeout=30000)
    assert not errors, errors
    assert metric(server, "seglabel_track_sessions") == 0
