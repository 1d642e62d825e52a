"""The web page at ``/`` in a real browser: the distribution's headless Chromium driven by Playwright
against a live server (tiny models, random weights: the page lowers the filters itself, as it says).
A screenshot is left in test-output/web/."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from seglabel_client import sample_image_bytes

from tests.system import free_port, headless_chromium, output_dir

pytestmark = pytest.mark.slow  # a browser

PHOTO = "astronaut.jpg"  # 512 x 512


@pytest.fixture
async def browser():
    async with headless_chromium() as b:
        yield b


async def coloured_pixels(page) -> int:
    return await page.evaluate(
        """() => { const c = document.getElementById('overlay');
                  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""
    )


async def test_the_page_segments_streams_labels_clicks_and_downloads(make_server, browser, tmp_path):
    port = free_port()
    await make_server(http_port=port)
    base = f"http://127.0.0.1:{port}"
    photo = tmp_path / PHOTO
    photo.write_bytes(sample_image_bytes(PHOTO))
    out = output_dir("web")

    page = await browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    errors, requests_seen = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests_seen.append((r.method, r.url.removeprefix(base))))
    await page.goto(base + "/")
    # /info said random weights: the warning shows and the filters are lowered so that masks appear.
    await page.wait_for_function("document.getElementById('pred-iou').value === '0'")
    assert await page.is_visible("#random-warning")

    await page.set_input_files("#file", str(photo))
    await page.wait_for_selector("#status[data-state=ready]")
    await page.fill("#grid", "4")
    await page.fill("#max-masks", "6")
    await page.fill("#vocabulary", "person, rocket, flag, sky, helmet")
    await page.click("#segment")
    await page.wait_for_selector("#status[data-state=done], #status[data-state=error]", timeout=60_000)
    status = await page.text_content("#status")
    assert status.startswith("6 masks, 6 labels"), status
    assert ("POST", "/segment/stream") in requests_seen  # labels arrived over Server-Sent Events

    grid_rows = page.locator("#labels tbody tr[data-source=grid]")
    assert await grid_rows.count() == 6  # mask_count rows
    labels = [await grid_rows.nth(i).locator("td").nth(2).text_content() for i in range(6)]
    assert set(labels) <= {"person", "rocket", "flag", "sky", "helmet"}, labels
    # The overlay is shown, at the image's size, and painted from the masks' RLE.
    assert await page.is_visible("#overlay")
    size = await page.evaluate(
        "[document.getElementById('overlay').width, document.getElementById('overlay').height]"
    )
    assert size == [512, 512]
    painted = await coloured_pixels(page)
    assert painted > 0

    # The page decodes COCO RLE exactly as pycocotools does.
    objs = await page.evaluate(
        "window.seglabel.objects.map(o => ({rle: o.rle, area: o.area, pixels: Array.from(o.pixels)}))"
    )
    for o in objs:
        ref = mask_utils.decode({"size": o["rle"]["size"], "counts": o["rle"]["counts"].encode()})
        assert sorted(o["pixels"]) == np.flatnonzero(ref.reshape(-1)).tolist()
        assert len(o["pixels"]) == o["area"]

    # Hovering a row highlights its mask (and only its row).
    await grid_rows.nth(0).hover()
    assert await page.locator("#labels tbody tr.hl").count() == 1
    assert await page.evaluate("window.seglabel.hover") == int(
        await grid_rows.nth(0).get_attribute("data-key")
    )

    # A click segments one object: a new row with its mask and label; shift-click refines it.
    before = await page.evaluate("document.getElementById('overlay').toDataURL()")
    box = await page.locator("#overlay").bounding_box()
    await page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.3)
    clicked = page.locator("#labels tbody tr[data-source=click]")
    await page.wait_for_function(
        "window.seglabel.objects.some(o => o.source === 'click' && o.pixels && o.label)", timeout=30_000
    )
    assert await clicked.count() == 1 and await grid_rows.count() == 6
    assert (await clicked.locator("td").nth(2).text_content()) in {
        "person",
        "rocket",
        "flag",
        "sky",
        "helmet",
    }
    assert await page.evaluate("document.getElementById('overlay').toDataURL()") != before
    status = await page.text_content("#status")
    assert "waited" not in status and await page.get_attribute("#status", "data-state") == "done"

    # The refining click's answer comes back as if it had queued 180 ms behind a job (the server's
    # own answer, its queue time raised: the tiny models never queue a click that long): the page
    # says the click waited behind other work.
    async def queued(route):
        reply = await route.fetch()
        body = await reply.json()
        body["timings"]["queue_ms"] = 180.0
        await route.fulfill(response=reply, json=body)

    await page.route("**/segment", queued)
    await page.keyboard.down("Shift")
    await page.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.8)
    await page.keyboard.up("Shift")
    await page.wait_for_function("window.seglabel.objects.at(-1).points.length === 2")
    await page.wait_for_selector("#status[data-state=waited]", timeout=30_000)
    assert "waited 180 ms behind other work" in await page.text_content("#status")
    await page.unroute("**/segment")
    point = await page.evaluate("window.seglabel.objects.at(-1).points.map(p => p.positive)")
    assert point == [True, False]
    assert await clicked.count() == 1  # the same object, refined

    async with page.expect_download() as dl:
        await page.click("#download")
    saved = out / "astronaut.coco.json"
    await (await dl.value).save_as(saved)
    coco = json.loads(saved.read_text())
    assert coco["images"][0]["width"] == 512 and coco["info"]["random_weights"] is True
    anns = coco["annotations"]
    assert len(anns) == 7 and [a["source"] for a in anns].count("click") == 1
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for a in anns:
        m = mask_utils.decode(
            {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        )
        assert m.shape == (512, 512) and int(m.sum()) == a["area"]
        assert (
            names[a["category_id"]] in {"person", "rocket", "flag", "sky", "helmet"} and len(a["bbox"]) == 4
        )

    await page.screenshot(path=str(out / "page.png"), full_page=True)
    assert (out / "page.png").stat().st_size > 10_000
    assert errors == []


async def test_the_page_and_its_files_need_no_token_but_the_api_does(make_server, browser, tmp_path):
    port = free_port()
    (tmp_path / "token").write_text("s3cret\n")
    await make_server(http_port=port, auth_token_file=str(tmp_path / "token"))
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{port}/")
    await page.wait_for_function("document.getElementById('server-info').textContent.includes('401')")
    await page.fill("#token", "s3cret")
    await page.dispatch_event("#token", "change")
    await page.wait_for_function("document.getElementById('server-info').textContent.includes('seglabel')")
    assert "401" not in await page.text_content("#server-info")


async def test_the_page_labels_many_images_and_downloads_coco_and_a_zip(
    make_server, browser, tmp_path, photo
):
    import zipfile

    from tests.dataset_folder import crops

    port = free_port()
    await make_server(http_port=port)
    base = f"http://127.0.0.1:{port}"
    files = []
    for i, img in enumerate(crops(photo, 3)):
        files.append(tmp_path / f"shot_{i}.png")
        img.save(files[-1])
    (tmp_path / "notes.png").write_text("not an image")
    files.append(tmp_path / "notes.png")

    page = await browser.new_page(viewport={"width": 1280, "height": 1100}, accept_downloads=True)
    errors, missing = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    await page.goto(base + "/")
    await page.wait_for_function("document.getElementById('pred-iou').value === '0'")
    # The grid field shows the server's default, not 0.
    assert await page.input_value("#grid") == "16"
    await page.fill("#grid", "4")
    await page.fill("#max-masks", "5")
    await page.fill("#vocabulary", "cat, dog")
    await page.select_option("#mask-format", "polygon")
    await page.set_input_files("#files", [str(f) for f in files])
    await page.wait_for_selector("#dataset-status[data-state=done]", timeout=90_000)
    rows = page.locator("#dataset tbody tr")
    assert await rows.count() == 4
    states = {
        await rows.nth(i).get_attribute("data-name"): await rows.nth(i).get_attribute("data-status")
        for i in range(4)
    }
    assert states == {
        "shot_0.png": "done",
        "shot_1.png": "done",
        "shot_2.png": "done",
        "notes.png": "skipped",
    }
    assert (await page.text_content("#dataset-status")).startswith("3 labelled, 0 failed, 1 skipped")

    async with page.expect_download() as dl:
        await page.click("#download-coco")
    saved = tmp_path / "annotations.coco.json"
    await (await dl.value).save_as(saved)
    coco = json.loads(saved.read_text())
    assert sorted(im["file_name"] for im in coco["images"]) == ["shot_0.png", "shot_1.png", "shot_2.png"]
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    assert coco["info"]["mask_format"] == "polygon"
    per_image = {im["id"]: 0 for im in coco["images"]}
    for a in coco["annotations"]:
        per_image[a["image_id"]] += 1
    assert set(per_image.values()) == {5}
    async with page.expect_download() as dl:
        await page.click("#download-zip")
    zipped = tmp_path / "dataset.zip"
    await (await dl.value).save_as(zipped)
    with zipfile.ZipFile(zipped) as z:
        names = set(z.namelist())
        assert {"annotations.coco.json", "yolo/data.yaml", "yolo/labels/shot_0.txt"} <= names
        assert json.loads(z.read("annotations.coco.json")) == coco
        assert "names:" in z.read("yolo/data.yaml").decode()
    await page.screenshot(path=str(output_dir("web") / "dataset.png"), full_page=True)
    assert not errors, errors
    assert not missing, missing  # the favicon included


async def test_the_page_corrects_a_label_and_relabels_every_mask(make_server, browser, tmp_path):
    """Click a mask's label, type the right one: the mask becomes an example in the stored
    vocabulary and the image's masks are relabelled from their kept crop embeddings."""
    import requests

    port = free_port()
    await make_server(http_port=port)
    base = f"http://127.0.0.1:{port}"
    labels = ["person", "rocket", "flag", "sky", "helmet"]
    # Random weights: text margins ~10x real CLIP's, so the vocabulary's examples weigh alpha 100.
    made = await asyncio.to_thread(  # the server shares this event loop: never block it
        requests.post, f"{base}/vocabularies", json={"name": "page", "labels": labels, "alpha": 100}
    )
    assert made.status_code == 200
    photo = tmp_path / PHOTO
    photo.write_bytes(sample_image_bytes(PHOTO))
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors, seen = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))  # e.g. a bad pattern
    page.on("request", lambda r: seen.append((r.method, r.url.removeprefix(base))))
    await page.goto(base + "/")
    await page.wait_for_function("document.getElementById('pred-iou').value === '0'")
    # The Teach-into field's pattern is valid (Chromium's v flag) and checks the name as the server does.
    valid = (
        "(v) => { const e = document.getElementById('teach-vocab'); e.value = v; return e.checkValidity(); }"
    )
    assert await page.evaluate(valid, "my_vocab-2.b") and not await page.evaluate(valid, "-bad name")
    await page.evaluate(valid, "page")
    await page.set_input_files("#file", str(photo))
    await page.wait_for_selector("#status[data-state=ready]")
    await page.fill("#grid", "4")
    await page.fill("#max-masks", "6")
    await page.fill("#vocabulary", ", ".join(labels))
    await page.click("#segment")
    await page.wait_for_selector("#status[data-state=done]", timeout=60_000)
    rows = page.locator("#labels tbody tr[data-source=grid]")
    assert await page.evaluate("window.seglabel.objects.every(o => o.requestId)")

    await rows.nth(0).locator("td").nth(2).click()
    assert await page.is_visible("#correct")
    await page.fill("#correct-label", "part-7731")
    await page.click("#correct button[type=submit]")
    await page.wait_for_selector("#status[data-state=done], #status[data-state=error]", timeout=30_000)
    status = await page.text_content("#status")
    assert status.startswith("taught “part-7731”") and "ms (server)" in status, status
    assert (await rows.nth(0).locator("td").nth(2).text_content()) == "part-7731"
    assert await page.is_checked("#use-taught")
    assert ("POST", "/vocabularies/page/examples") in seen and ("POST", "/relabel") in seen
    vocab = (await asyncio.to_thread(requests.get, f"{base}/vocabularies/page")).json()
    taught = [lab for lab in vocab["labels"] if lab["label"]["name"] == "part-7731"]
    assert taught and taught[0]["positives"] == 1
    # the next segmentation labels with the taught vocabulary
    await page.click("#segment")
    await page.wait_for_selector("#status[data-state=done]", timeout=60_000)
    body = await page.evaluate("JSON.stringify(window.seglabel.objects.map(o => o.label))")
    assert "part-7731" in body
    assert errors == []
