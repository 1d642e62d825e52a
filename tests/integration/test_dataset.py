"""seglabel label / eval: a folder in, COCO and YOLO-seg out, read back by the tools users train
with (pycocotools, supervision); resumable after SIGKILL; a server that comes late is waited for
(tiny models; their masks are meaningless, the mechanics are not)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from seglabel_api.datasets.annotations import POLYGON_MIN_IOU, segmentation, yolo_polygon
from seglabel_api.datasets.job import dataset_request
from seglabel_client.bench import free_port
from seglabel_client.dataset import LabelOptions, ServerGone, evaluate, label_folder_async
from seglabel_server.service.config import ServerConfig
from seglabel_server.transport.server import create_server

from tests.dataset_folder import crops, make_folder

LOOSE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
OPTS = dict(points_per_side=4, max_masks=6, **LOOSE)


def _coco(path: Path) -> COCO:
    coco = COCO()
    coco.dataset = json.loads(path.read_text(encoding="utf-8"))
    coco.createIndex()
    return coco


def _without_info(path: Path) -> dict:
    d = json.loads(path.read_text(encoding="utf-8"))
    d.pop("info")
    return d


@pytest.fixture
def folder(tmp_path, photo):
    root = tmp_path / "photos"
    root.mkdir()
    return root, make_folder(root, photo)


async def test_a_folder_becomes_coco_and_yolo_that_users_tools_read(make_server, folder, tmp_path):
    root, expect = folder
    server = await make_server()
    target = f"127.0.0.1:{server.port}"
    out = tmp_path / "out"
    opts = LabelOptions(
        dataset_request(labels=("cat", "dog", "part-7731"), **OPTS), formats=("coco", "yolo-seg")
    )
    report = await label_folder_async(root, out, target, opts)
    # the report: every image, the duplicate once, undecodable files named with their reason
    assert report["images"] == expect["images"] + 1  # + the truncated JPEG (an image until decoded)
    assert report["labelled"] == expect["images"] and report["duplicates"] == 1
    assert report["skipped_not_images"] == expect["skipped"]
    failed = {f["file"]: f["reason"] for f in report["failed"]}
    assert set(failed) == expect["failed"]
    assert (
        "INVALID_ARGUMENT" in failed["broken/truncated.jpg"] and "not an image" in failed["broken/text.png"]
    )
    assert report["random_weights"] and json.loads((out / "report.json").read_text()) == report

    coco = _coco(out / "annotations.coco.json")
    names = {im["file_name"]: im for im in coco.dataset["images"]}
    assert sorted(names) == expect["names"]
    rotated, w, h = expect["rotated"]
    assert (names[rotated]["width"], names[rotated]["height"]) == (w, h)  # EXIF applied, as displayed
    assert [c["name"] for c in coco.dataset["categories"]] == ["cat", "dog", "part-7731"]
    anns = coco.dataset["annotations"]
    assert anns and [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    for a in anns:  # bbox and area agree with the annotation's own mask
        m = coco.annToMask(a)
        im = coco.imgs[a["image_id"]]
        assert m.shape == (im["height"], im["width"])
        assert a["area"] == int(m.sum()) > 0 and a["iscrowd"] == 0
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert 0 <= a["score"] <= 1 and "predicted_iou" in a
    one, two = (names[n]["id"] for n in expect["duplicate"])  # labelled once, listed under both names
    strip = lambda image: [
        {k: v for k, v in a.items() if k not in ("id", "image_id")} for a in coco.imgToAnns[image]
    ]
    assert strip(one) == strip(two)
    # the annotations read back as results score AP 1.0 against themselves
    result = evaluate(out / "annotations.coco.json", out / "annotations.coco.json")
    assert result["stats"]["AP"] == pytest.approx(1.0) and result["images"] == expect["images"]

    # YOLO-seg: one label file per image, mirroring the tree; supervision reads both formats alike
    import supervision as sv

    yolo = out / "yolo"
    assert (yolo / "images").resolve() == root.resolve()
    assert (yolo / "labels" / "ünïcødé" / "фото 03.txt").is_file()
    for sub in ("", "a"):
        ds = sv.DetectionDataset.from_yolo(
            images_directory_path=str(yolo / "images" / sub), annotations_directory_path=str(yolo / "labels" / sub),
            data_yaml_path=str(yolo / "data.yaml"), force_masks=True,
        )  # fmt: skip
        assert ds.classes == ["cat", "dog", "part-7731"]
        for path, _, det in ds:
            name = Path(path).relative_to(yolo / "images").as_posix()
            lines = (yolo / "labels" / name).with_suffix(".txt").read_text().splitlines()
            # one line per object whose mask has an outline of 3 points (a one-pixel mask has none:
            # the tiny model gives some on the 8x8 image)
            im = names[name]
            outlined = [
                a
                for a in coco.imgToAnns[im["id"]]
                if yolo_polygon(
                    a["segmentation"]["counts"], im["height"], im["width"], opts.polygon_tolerance
                )
            ]
            assert len(det) == len(lines) == len(outlined)
            if len(det):
                assert det.mask is not None and det.mask.shape[1:] == (
                    names[name]["height"],
                    names[name]["width"],
                )
    ds = sv.DetectionDataset.from_coco(
        images_directory_path=str(root), annotations_path=str(out / "annotations.coco.json"), force_masks=True
    )
    assert len(ds) == expect["images"]
    assert sum(len(det) for _, _, det in ds) == len(anns)

    # polygon mode: polygons redraw their mask (IoU >= 0.9); masks with holes stay RLE
    out_p = tmp_path / "out_polygon"
    await label_folder_async(root, out_p, target, LabelOptions(opts.request, mask_format="polygon"))
    poly = _coco(out_p / "annotations.coco.json")
    info = poly.dataset["info"]
    assert "holes" in info["segmentation"] and info["mask_format"] == "polygon"
    assert len(poly.dataset["annotations"]) == len(anns)
    polygons = 0
    for a, b in zip(anns, poly.dataset["annotations"]):
        assert (a["image_id"], a["category_id"], a["score"]) == (b["image_id"], b["category_id"], b["score"])
        exact = coco.annToRLE(a)
        if isinstance(b["segmentation"], list):
            polygons += 1
            assert mask_utils.iou([poly.annToRLE(b)], [exact], [0])[0][0] >= POLYGON_MIN_IOU
        else:
            assert b["segmentation"] == a["segmentation"]
    assert polygons + sum(
        1 for b in poly.dataset["annotations"] if isinstance(b["segmentation"], dict)
    ) == len(anns)


def test_polygons_follow_drawn_shapes_and_a_ring_stays_rle():
    import cv2

    h, w = 120, 160
    shapes = {}
    disc = np.zeros((h, w), np.uint8)
    cv2.circle(disc, (50, 60), 30, 1, -1)
    shapes["disc"] = disc
    two = np.zeros((h, w), np.uint8)
    two[10:40, 10:60] = 1
    two[70:110, 100:150] = 1
    shapes["two boxes"] = two
    ring = disc.copy()
    cv2.circle(ring, (50, 60), 12, 0, -1)
    shapes["ring"] = ring
    for name, m in shapes.items():
        rle = mask_utils.encode(np.asfortranarray(m))
        seg, drawn, why = segmentation(rle["counts"].decode(), h, w, "polygon", 1.0)
        if name == "ring":
            assert why == "holes" and isinstance(seg, dict)
            continue
        assert isinstance(seg, list) and why is None, name
        assert len(seg) == (2 if name == "two boxes" else 1)
        assert mask_utils.iou([drawn], [rle], [0])[0][0] >= 0.95, name


async def _journal_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n") - 1
    except FileNotFoundError:
        return 0


@pytest.mark.slow
async def test_a_killed_run_continues_where_it_stopped_and_gives_the_same_files(make_server, tmp_path, photo):
    from PIL import Image

    root = tmp_path / "many"
    for i, img in enumerate(crops(photo, 24)):
        (root / f"part{i % 3}").mkdir(parents=True, exist_ok=True)
        img.save(root / f"part{i % 3}" / f"{i:03d}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "blank.png")
    server = await make_server()
    target = f"127.0.0.1:{server.port}"
    whole = tmp_path / "whole"
    await label_folder_async(
        root, whole, target, LabelOptions(dataset_request(**OPTS), formats=("coco", "yolo-seg"))
    )

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "seglabel_client.cli", "--server", target, "label", str(root), "--out", str(out),
           "--format", "coco,yolo-seg", "--grid", "4", "--max-masks", "6", "--pred-iou-thresh", "0",
           "--stability-score-thresh", "0", "--box-nms-thresh", "1", "--window", "1", "--quiet"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*cmd)
    journal = out / "journal.jsonl"
    for _ in range(600):
        if await _journal_lines(journal) >= 5:
            break
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    done = await _journal_lines(journal)
    assert 5 <= done < 25, "killed in the middle"
    assert not (out / "annotations.coco.json").exists()
    with open(journal, "ab") as f:  # a record torn by the kill
        f.write(b'{"sha":"0123","ok":tr')
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await proc.communicate()
    assert proc.returncode == 0, stdout
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_journal"] == done and report["labelled_this_run"] == 25 - done
    assert _without_info(out / "annotations.coco.json") == _without_info(whole / "annotations.coco.json")
    for txt in (whole / "yolo" / "labels").rglob("*.txt"):
        assert (
            out / "yolo" / "labels" / txt.relative_to(whole / "yolo" / "labels")
        ).read_text() == txt.read_text()
    lines = journal.read_bytes().splitlines()
    assert len(lines) == 26 and len({json.loads(x)["sha"] for x in lines[1:]}) == 25  # nothing twice

    # the same command with other options refuses to mix the two jobs
    other = [*cmd[:-1], "--grid", "5", "--quiet"]
    proc = await asyncio.create_subprocess_exec(*other, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"points_per_side" in err and b"--restart" in err


async def test_a_server_that_comes_late_is_waited_for_and_one_that_never_comes_stops_the_run(
    tiny_repo, tmp_path, photo
):
    root = tmp_path / "few"
    root.mkdir()
    for i, img in enumerate(crops(photo, 3)):
        img.save(root / f"{i}.png")
    port = free_port()
    target = f"127.0.0.1:{port}"
    with pytest.raises(ServerGone, match="run the same command again"):
        await label_folder_async(
            root, tmp_path / "never", target, LabelOptions(dataset_request(**OPTS), server_wait_s=1.0)
        )

    async def start_later():
        await asyncio.sleep(1.5)
        server = await create_server(ServerConfig(port=port, models=str(tiny_repo)))
        await server.load()
        return server

    late = asyncio.create_task(start_later())
    report = await label_folder_async(
        root, tmp_path / "late", target, LabelOptions(dataset_request(**OPTS), server_wait_s=60)
    )
    server = await late
    try:
        assert report["labelled"] == 3 and not report["failed"]
    finally:
        await server.stop(0)


def _shapes_gt(root: Path) -> tuple[Path, list]:
    """Three images of drawn shapes and their ground truth (COCO RLE), written as the GT file."""
    import cv2
    from PIL import Image

    images, anns = [], []
    for i in range(3):
        h, w = 96, 128
        canvas = np.full((h, w, 3), 255, np.uint8)
        masks = []
        for k, (_cat, draw) in enumerate((("disc", "circle"), ("box", "rect"))):
            m = np.zeros((h, w), np.uint8)
            if draw == "circle":
                cv2.circle(m, (30 + 10 * i, 40), 18, 1, -1)
            else:
                m[50 : 85 - 5 * i, 70 : 120 - 8 * i] = 1
            canvas[m > 0] = (40 * k, 200 - 60 * k, 90)
            masks.append((k + 1, m))
        Image.fromarray(canvas).save(root / f"shapes_{i}.png")
        images.append({"id": i + 1, "file_name": f"shapes_{i}.png", "width": w, "height": h})
        for cat, m in masks:
            rle = mask_utils.encode(np.asfortranarray(m))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                         "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                         "area": int(m.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)]})  # fmt: skip
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "box"}],
    }
    path = root / "gt.coco.json"
    path.write_text(json.dumps(gt))
    return path, anns


def test_eval_scores_ground_truth_against_itself_and_a_worse_prediction_lower(tmp_path):
    gt_path, anns = _shapes_gt(tmp_path)
    assert evaluate(gt_path, gt_path)["stats"]["AP"] == pytest.approx(1.0)
    pred = json.loads(gt_path.read_text())
    # numbered differently (matched by file name and category name), one box labelled a disc,
    # every disc shrunk to half its radius
    pred["images"] = [dict(im, id=im["id"] + 100) for im in pred["images"]]
    pred["categories"] = [{"id": 7, "name": "box"}, {"id": 9, "name": "disc"}]
    for a in pred["annotations"]:
        a["image_id"] += 100
        a["category_id"] = {1: 9, 2: 7}[a["category_id"]]
        a["score"] = 0.9
    pred["annotations"][1]["category_id"] = 9
    for a in pred["annotations"]:
        if a["category_id"] == 9 and a["id"] != 2:
            m = mask_utils.decode(
                {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
            )
            ys, xs = np.nonzero(m)
            cy, cx = ys.mean(), xs.mean()
            yy, xx = np.mgrid[: m.shape[0], : m.shape[1]]
            half = ((yy - cy) ** 2 + (xx - cx) ** 2 <= (np.sqrt(m.sum() / np.pi) / 2) ** 2).astype(np.uint8)
            rle = mask_utils.encode(np.asfortranarray(half))
            a["segmentation"] = {"size": a["segmentation"]["size"], "counts": rle["counts"].decode()}
    pred_path = tmp_path / "pred.json"
    pred_path.write_text(json.dumps(pred))
    result = evaluate(gt_path, pred_path)
    per = {c["name"]: c for c in result["per_category"]}
    assert per["disc"]["AP"] == pytest.approx(0.0, abs=1e-6)  # IoU 0.25 and a box: never a match
    assert 0.5 < per["box"]["AP"] < 1.0  # two of three boxes found
    assert per["box"]["gt"] == 3 and per["box"]["pred"] == 2 and per["disc"]["pred"] == 4
    out = os.popen(f"{sys.executable} -m seglabel_client.cli eval --gt {gt_path} --pred {pred_path}").read()
    assert "AP" in out and "disc" in out and "box" in out


async def test_dataset_jobs_over_http(make_server, tmp_path, photo):
    import io
    import zipfile

    import requests

    from tests.system import free_port

    port = free_port()
    await make_server(http_port=port)
    base = f"http://127.0.0.1:{port}"
    imgs = []
    for img in crops(photo, 2):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        imgs.append(buf.getvalue())

    def run():
        r = requests.post(f"{base}/datasets", json={"vocabulary": ["cat", "dog"], **OPTS})
        assert r.status_code == 200, r.text
        job = r.json()["job_id"]
        add = lambda name, data: requests.post(f"{base}/datasets/{job}/images", files={"image": (name, data)},
                                               data={"name": name})  # fmt: skip
        assert add("a/one.png", imgs[0]).json()["status"] == "labelling"
        assert add("b/same.png", imgs[0]).json()["duplicate_of"] == "a/one.png"
        assert add("two.png", imgs[1]).status_code == 200
        assert add("bad.png", b"\xff\xd8\xff broken jpeg").status_code == 200
        assert add("notes.txt", b"hello").json()["status"] == "skipped"
        r = add("../escape.png", imgs[1])
        assert r.status_code == 400 and "relative path" in r.json()["error"]["message"]
        assert add("two.png", imgs[1]).status_code == 400  # the same name twice
        coco = requests.get(f"{base}/datasets/{job}/annotations.coco.json").json()  # waits for the job
        status = requests.get(f"{base}/datasets/{job}").json()
        by_name = {e["name"]: e for e in status["images"]}
        assert by_name["bad.png"]["status"] == "failed" and "INVALID" in by_name["bad.png"]["reason"]
        assert status["done"] == 3 and status["failed"] == 1 and status["skipped"] == 1 and not status["busy"]
        assert sorted(im["file_name"] for im in coco["images"]) == ["a/one.png", "b/same.png", "two.png"]
        assert len(coco["annotations"]) == 3 * 6
        z = zipfile.ZipFile(io.BytesIO(requests.get(f"{base}/datasets/{job}/dataset.zip").content))
        assert {"yolo/labels/a/one.txt", "yolo/labels/b/same.txt", "yolo/labels/two.txt"} <= set(z.namelist())
        assert requests.delete(f"{base}/datasets/{job}").status_code == 200
        r = requests.get(f"{base}/datasets/{job}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = requests.post(f"{base}/datasets", json={"mask_format": "svg"})
        assert r.status_code == 400

    await asyncio.to_thread(run)
