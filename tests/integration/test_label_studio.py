"""seglabel as the ML backend of a real Label Studio (1.23, from the package registry, on loopback
with SQLite; ``tests/labelstudio.py``), driven through Label Studio's own SDK as a team would:
a project, its images, seglabel connected as its model, predictions for every task, read back
through Label Studio's API and decoded by Label Studio's own brush decoder, then an annotator's
corrections that become examples and change the next predictions. Tiny models, random weights."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import numpy as np
import pytest
import requests
from PIL import Image
from pycocotools import mask as mask_utils
from seglabel_client import sample_image_bytes

from tests.labelstudio import LabelStudio
from tests.system import free_port

pytestmark = pytest.mark.slow  # Label Studio takes about a minute to start

LABELS = ["person", "rocket", "cup", "sky"]
CONFIG = f"""<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">{"".join(f'<Label value="{x}"/>' for x in LABELS)}</BrushLabels>
  <KeyPointLabels name="click" toName="image" smart="true"><Label value="person" smart="true"/></KeyPointLabels>
</View>"""
# Random weights: the filters off and a small grid, so that every image has masks (a team leaves them on).
EXTRA = {
    "points_per_side": 4,
    "pred_iou_thresh": 0,
    "stability_score_thresh": 0,
    "box_nms_thresh": 1,
    "max_masks": 5,
}


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    ls = LabelStudio(tmp_path_factory.mktemp("label-studio"))
    yield ls
    ls.stop()


def photos(tmp_path, n: int) -> list:
    out = []
    for i in range(n):
        if i < 2:
            data = sample_image_bytes(("astronaut.jpg", "coffee.jpg")[i])
        else:
            rng = np.random.default_rng(i)
            im = Image.fromarray((rng.random((96 + 8 * i, 128, 3)) * 255).astype(np.uint8))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            data = buf.getvalue()
        path = tmp_path / f"photo-{i}.{'jpg' if i < 2 else 'png'}"
        path.write_bytes(data)
        out.append(path)
    return out


def mask_of(label_studio, region) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    bits = label_studio.call("decode", rle=region["value"]["rle"], height=h, width=w)["bits"]
    return np.unpackbits(np.frombuffer(base64.b64decode(bits), np.uint8))[: h * w].reshape(h, w).astype(bool)


async def seglabel_masks(base: str, path, vocabulary: str) -> tuple[list[np.ndarray], list[str]]:
    """The same image segmented through seglabel's own /segment: what the predictions must equal."""
    body = {"image": base64.b64encode(path.read_bytes()).decode(), "vocabulary_name": vocabulary,
            "return_overlay": False, "top_k": 5, **EXTRA}  # fmt: skip
    got = (await asyncio.to_thread(requests.post, f"{base}/segment", json=body, timeout=120)).json()
    labels = {lab.get("mask_index", 0): lab["label"] for lab in got["labels"]}
    masks = [
        mask_utils.decode({"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()})
        for m in got["masks"]
    ]
    return [m.astype(bool) for m in masks], [labels[m.get("index", 0)] for m in got["masks"]]


async def wait_for(check, seconds: float = 60):
    end = time.monotonic() + seconds
    while True:
        got = await asyncio.to_thread(check)
        if got or time.monotonic() > end:
            return got
        await asyncio.sleep(0.5)


async def test_label_studio_predicts_its_tasks_and_learns_from_an_annotators_corrections(
    make_server, label_studio, tmp_path
):
    ls = label_studio
    port = free_port()
    key = tmp_path / "ls-key"
    key.write_text(ls.token)  # the team's personal access token: seglabel reads the uploaded images with it
    await make_server(http_port=port, label_studio_api_key_file=str(key))
    base = f"http://127.0.0.1:{port}"
    call = ls.acall

    project = (await call("project", title="seglabel test", config=CONFIG))["id"]
    vocab = f"label-studio-{project}"
    # the team's vocabulary for this project, made before connecting: examples weigh alpha 100 (random weights)
    made = await asyncio.to_thread(
        requests.post, f"{base}/vocabularies", json={"name": vocab, "labels": LABELS, "alpha": 100}
    )
    assert made.status_code == 200, made.text
    files = photos(tmp_path, 3)
    await call("upload", project=project, files=[str(p) for p in files])
    tasks = (await call("add_tasks", project=project, tasks=[{"image": "http://127.0.0.1:9/gone.jpg"}]))[
        "tasks"
    ]
    assert len(tasks) == 4
    ml = await call("connect", project=project, url=f"{base}/label-studio", extra_params=EXTRA)
    assert ml["model_version"].endswith(f"{vocab}-r1") and "random-weights" in ml["model_version"]

    await call("retrieve", project=project)
    preds = (await call("predictions", project=project))["predictions"]
    by_task = {p["task"]: p for p in preds}
    bad = next(t["id"] for t in tasks if t["data"]["image"].startswith("http://127.0.0.1:9/"))
    assert bad not in by_task  # the unreachable image answered for its own task only
    assert len(by_task) == 3
    status = (await asyncio.to_thread(requests.get, f"{base}/label-studio/status")).json()
    assert status["predicted"] == 3 and status["failed"] == 1

    # every prediction, read back through Label Studio and decoded by its own decoder, is seglabel's answer
    for t in tasks:
        if t["id"] == bad:
            continue
        p = by_task[t["id"]]
        assert p["model_version"] == ml["model_version"]
        path = next(f for f in files if f.name in t["data"]["image"])
        want, want_labels = await seglabel_masks(base, path, vocab)
        regions = p["result"]
        assert regions and len(regions) == len(want)
        for r, m, lab in zip(regions, want, want_labels):
            assert r["type"] == "brushlabels" and r["from_name"] == "tag" and r["to_name"] == "image"
            got = mask_of(ls, r)
            assert got.shape == m.shape and (got == m).all()  # IoU 1.0
            assert r["value"]["brushlabels"] == [lab] and 0 <= r["score"] <= 1
        assert p["score"] == pytest.approx(np.mean([r["score"] for r in regions]), abs=1e-5)

    # an annotator accepts the first task's prediction but relabels one region and deletes another
    t0 = max(by_task, key=lambda t: len(by_task[t]["result"]))
    p0 = by_task[t0]
    regions = [dict(r) for r in p0["result"]]
    assert len(regions) >= 2
    old = regions[0]["value"]["brushlabels"][0]
    new = next(x for x in LABELS if x != old)
    regions[0] = {**regions[0], "value": {**regions[0]["value"], "brushlabels": [new]}}
    deleted = regions.pop(1)
    for r in regions:
        r.pop("score", None)
    annotation = (await call("annotate", task=t0, result=regions, prediction=p0["id"]))["id"]

    def taught():
        v = requests.get(f"{base}/vocabularies/{vocab}", timeout=30).json()
        counts = {lab["label"]["name"]: (lab["positives"], lab["negatives"]) for lab in v["labels"]}
        return counts if counts.get(new, (0, 0))[0] else None

    counts = await wait_for(taught)
    assert counts, "the annotation's webhook added no example"
    expected = {x: [0, 0] for x in LABELS}
    expected[new][0] += 1
    expected[old][1] += 1
    expected[deleted["value"]["brushlabels"][0]][1] += 1
    assert counts == {x: tuple(v) for x, v in expected.items()}

    # the next predictions follow the team: a new model version, and the relabelled mask now says `new`
    await call("retrieve", project=project)
    again = [p for p in (await call("predictions", project=project))["predictions"] if p["task"] == t0]
    latest = max(again, key=lambda p: p["id"])
    assert latest["model_version"] != p0["model_version"]
    relabelled = mask_of(ls, p0["result"][0])
    match = [r for r in latest["result"] if (mask_of(ls, r) == relabelled).all()]
    assert match and match[0]["value"]["brushlabels"] == [new]

    # the annotator changes their mind (the region back to `old`): the annotation's examples are replaced
    regions[0] = {**regions[0], "value": {**regions[0]["value"], "brushlabels": [old]}}
    await call("update_annotation", annotation=annotation, result=regions)

    def replaced():
        v = requests.get(f"{base}/vocabularies/{vocab}", timeout=30).json()
        counts = {lab["label"]["name"]: (lab["positives"], lab["negatives"]) for lab in v["labels"]}
        return counts if counts[new] == (0, 0) and sum(p + n for p, n in counts.values()) == 1 else None

    counts = await wait_for(replaced)
    assert (
        counts and counts[new] == (0, 0) and sum(p + n for p, n in counts.values()) == 1
    )  # the deletion's negative

    # the annotation deleted: its examples go (ANNOTATIONS_DELETED)
    await call("delete_annotation", annotation=annotation)

    def forgotten():
        v = requests.get(f"{base}/vocabularies/{vocab}", timeout=30).json()
        return all(lab["positives"] + lab["negatives"] == 0 for lab in v["labels"])

    assert await wait_for(forgotten), "the deleted annotation's examples are still there"

    # interactive: a click in Label Studio becomes a point prompt; the mask comes back as a brush region
    t = next(t for t in tasks if t["id"] != bad)
    ctx = {"result": [{"type": "keypointlabels", "from_name": "click", "to_name": "image", "original_width": 512,
                       "original_height": 512, "is_positive": True,
                       "value": {"x": 50.0, "y": 40.0, "keypointlabels": ["person"]}}]}  # fmt: skip
    got = await call("interactive", ml=ml["id"], task=t["id"], context=ctx)
    assert got["status"] == 200, got
    result = got["body"]["data"]["result"]
    assert (
        len(result) == 1
        and result[0]["type"] == "brushlabels"
        and result[0]["value"]["brushlabels"] == ["person"]
    )
    assert mask_of(ls, result[0]).any()


async def test_a_project_over_the_time_budget_gets_its_other_predictions_posted(
    make_server, label_studio, tmp_path
):
    """Retrieve predictions for more tasks than fit in the time budget: the answer comes at once
    with what is done, the rest are posted to Label Studio's API as they finish (a whole project
    never meets Label Studio's 100 s ML timeout). Rectangles this time, from seglabel's boxes."""
    ls = label_studio
    port = free_port()
    key = tmp_path / "ls-key"
    key.write_text(ls.token)
    await make_server(http_port=port, label_studio_api_key_file=str(key), label_studio_predict_s=0.05)
    base = f"http://127.0.0.1:{port}"
    call = ls.acall
    config = CONFIG.replace("BrushLabels", "RectangleLabels")
    project = (await call("project", title="seglabel boxes", config=config))["id"]
    files = photos(tmp_path, 8)
    tasks = (await call("upload", project=project, files=[str(p) for p in files]))["tasks"]
    ml = await call("connect", project=project, url=f"{base}/label-studio", extra_params=EXTRA)
    took = (await call("retrieve", project=project))["seconds"]

    def all_posted():
        got = ls.call("predictions", project=project)["predictions"]
        return got if len(got) == len(tasks) else None

    preds = await wait_for(all_posted, 120)
    assert preds, "the background predictions were not all posted"
    status = (await asyncio.to_thread(requests.get, f"{base}/label-studio/status")).json()
    assert status["background"] >= 1 and status["posted"] == status["background"], status
    assert took < 30  # Label Studio's request was answered without waiting for every task
    for p in preds:
        assert p["model_version"] == ml["model_version"]
        t = next(t for t in tasks if t["id"] == p["task"])
        path = next(f for f in files if f.name in t["data"]["image"])
        body = {"image": base64.b64encode(path.read_bytes()).decode(), "vocabulary_name": f"label-studio-{project}",
                "return_overlay": False, "top_k": 5, **EXTRA}  # fmt: skip
        want = (await asyncio.to_thread(requests.post, f"{base}/segment", json=body, timeout=120)).json()
        assert len(p["result"]) == len(want["masks"])
        for r, m in zip(p["result"], want["masks"]):
            w, h = r["original_width"], r["original_height"]
            x, y, bw, bh = m["bbox"]
            v = r["value"]
            assert r["type"] == "rectanglelabels" and v["rectanglelabels"][0] in LABELS
            np.testing.assert_allclose([v["x"], v["y"], v["width"], v["height"]],
                                       [100 * x / w, 100 * y / h, 100 * bw / w, 100 * bh / h], atol=1e-4)  # fmt: skip


def _bits(d: dict) -> np.ndarray:
    h, w = d["shape"]
    return (
        np.unpackbits(np.frombuffer(base64.b64decode(d["bits"]), np.uint8))[: h * w]
        .reshape(h, w)
        .astype(bool)
    )


async def test_seglabel_label_writes_tasks_label_studio_imports_and_xml_cvats_reader_reads(
    make_server, label_studio, tmp_path
):
    """``seglabel label --format coco,label-studio,cvat --order uncertainty``: the tasks import into
    Label Studio as they are (its own decoder gives the COCO masks back), datumaro (CVAT's importer)
    reads the XML to the same masks, and the images' list starts with the most doubtful."""
    from pycocotools.coco import COCO
    from seglabel_api.datasets.job import dataset_request
    from seglabel_client.dataset import LabelOptions, label_folder_async

    server = await make_server()
    root = tmp_path / "photos"
    root.mkdir()
    for p in photos(tmp_path, 3):
        (root / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    opts = LabelOptions(dataset_request(labels=tuple(LABELS), **EXTRA), formats=("coco", "label-studio", "cvat"),
                        order="uncertainty")  # fmt: skip
    report = await label_folder_async(root, out, f"127.0.0.1:{server.port}", opts)
    assert set(report["outputs"]) == {"coco", "label-studio", "cvat", "order"}
    coco = COCO(str(out / "annotations.coco.json"))
    by_name = {im["file_name"]: im for im in coco.dataset["images"]}
    truth = {n: [(coco.cats[a["category_id"]]["name"], coco.annToMask(a).astype(bool), a["score"])
                 for a in coco.imgToAnns[im["id"]]] for n, im in by_name.items()}  # fmt: skip
    assert sum(len(v) for v in truth.values()) > 3

    order = [line.split("\t") for line in (out / "images-by-uncertainty.txt").read_text().splitlines()]
    assert sorted(n for n, _ in order) == sorted(truth)
    scores = [float(s) for _, s in order]
    assert scores == sorted(scores)
    for name, s in order:
        assert float(s) == pytest.approx(np.mean([x[2] for x in truth[name]]), abs=1e-5)

    # Label Studio: a project made with the written config, the tasks imported as they are
    config = (out / "label-studio-config.xml").read_text()
    project = (await label_studio.acall("project", title="imported", config=config))["id"]
    tasks = (await label_studio.acall("import_file", project=project,
                                     path=str(out / "label-studio-tasks.json")))["tasks"]  # fmt: skip
    assert [t["data"]["image"].rsplit("=", 1)[-1] for t in sorted(tasks, key=lambda t: t["id"])] == [
        n for n, _ in order
    ]
    preds = (await label_studio.acall("predictions", project=project))["predictions"]
    assert len(preds) == len(tasks)
    for p in preds:
        name = next(t["data"]["image"].rsplit("=", 1)[-1] for t in tasks if t["id"] == p["task"])
        assert len(p["result"]) == len(truth[name])
        for r, (label, mask, score) in zip(p["result"], truth[name]):
            assert r["value"]["brushlabels"] == [label] and r["score"] == pytest.approx(score, abs=1e-6)
            assert (mask_of(label_studio, r) == mask).all()

    # CVAT: datumaro reads the XML to the same labels and masks
    cvat_dir = tmp_path / "cvat"
    (cvat_dir / "images").mkdir(parents=True)  # CVAT's export layout: annotations.xml beside images/
    (cvat_dir / "annotations.xml").write_bytes((out / "cvat.xml").read_bytes())
    for p in root.iterdir():
        (cvat_dir / "images" / p.name).write_bytes(p.read_bytes())
    read = await label_studio.acall("read_cvat", folder=str(cvat_dir))
    assert read["labels"] == LABELS
    items = {it["name"]: it for it in read["items"]}
    for name, anns in truth.items():
        got = items[name.rsplit(".", 1)[0]]["anns"]
        assert [a["label"] for a in got] == [x[0] for x in anns]
        for a, (_, mask, _) in zip(got, anns):
            assert (_bits(a) == mask).all()
