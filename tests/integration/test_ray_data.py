"""seglabel-ray label: the dataset job on Ray Data (a local Ray cluster of 2 CPUs, actors of 1 CPU
on the tiny models): the same annotations as the command line's run over the same folder; an actor
killed in the middle is restarted by Ray and nothing is lost or written twice."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from seglabel_api.datasets.job import dataset_request
from seglabel_client.dataset import LabelOptions, label_folder_async

from tests.dataset_folder import crops, make_folder
from tests.system import need

pytestmark = pytest.mark.slow  # a local Ray cluster

LOOSE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
REQUEST = dict(points_per_side=4, max_masks=6, labels=("cat", "dog", "part-7731"), **LOOSE)


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray
        import ray.data  # noqa: F401
        from seglabel_server.transport.ray import datasets  # noqa: F401
    except ImportError as exc:
        need("ray", f"ray[data] is not installed ({exc}); pip install 'seglabel[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 << 20, logging_level="WARNING")
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield ray
    finally:
        ray.shutdown()


def _coco(path: Path) -> dict:
    d = json.loads(path.read_text(encoding="utf-8"))
    d.pop("info")
    return d


def actor_pids() -> list[int]:
    pids = []
    for f in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = f.read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and "LabelActor" in title:
            pids.append(int(f.parent.name))
    return pids


async def test_ray_data_gives_the_command_lines_annotations_and_survives_a_killed_actor(
    ray_cluster, make_server, tiny_repo, tmp_path, photo
):
    from seglabel_server.transport.ray import datasets

    server = await make_server()
    target = f"127.0.0.1:{server.port}"
    root = tmp_path / "photos"
    root.mkdir()
    make_folder(root, photo)
    for i, img in enumerate(crops(photo, 14)[4:]):  # more images, so that a kill lands mid-run
        img.save(root / f"more_{i:02d}.png")
    await label_folder_async(
        root,
        tmp_path / "client",
        target,
        LabelOptions(dataset_request(**REQUEST), formats=("coco", "yolo-seg")),
    )
    want = _coco(tmp_path / "client" / "annotations.coco.json")

    out = tmp_path / "ray"
    killed: list[int] = []

    def kill_one_actor_mid_run():
        journal = out / "journal.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_bytes().count(b"\n") >= 4 and actor_pids():
                pid = actor_pids()[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_one_actor_mid_run, daemon=True)
    watcher.start()
    import asyncio

    report = await asyncio.to_thread(
        datasets.label,
        str(root),
        out,
        LabelOptions(dataset_request(**REQUEST), formats=("coco", "yolo-seg")),
        {"models": str(tiny_repo)},
        actors=2,
        batch_size=2,
    )
    watcher.join(timeout=5)
    assert killed, "an actor was killed in the middle of the run"
    assert _coco(out / "annotations.coco.json") == want
    lines = (out / "journal.jsonl").read_bytes().splitlines()[1:]
    shas = [json.loads(x)["sha"] for x in lines]
    assert len(shas) == len(set(shas)) == report["distinct_images"]  # nothing twice, nothing missing
    assert {f["file"] for f in report["failed"]} == {"broken/truncated.jpg", "broken/text.png"}
    for txt in (tmp_path / "client" / "yolo" / "labels").rglob("*.txt"):
        rel = txt.relative_to(tmp_path / "client" / "yolo" / "labels")
        assert (out / "yolo" / "labels" / rel).read_text() == txt.read_text()


def test_a_stored_vocabulary_names_the_categories_from_a_shared_store(tiny_repo, tmp_path):
    """--vocabulary-name: the driver reads the vocabulary the actors will label with; a store the
    actors cannot share (memory) is refused before anything starts."""
    try:
        from seglabel_server.transport.ray.datasets import _stored_vocabulary
    except ImportError as exc:
        need("ray", f"ray[data] is not installed ({exc})")
    from seglabel_server.service.config import ServerConfig
    from seglabel_server.storage.vocabularies import open_vocabularies
    from seglabel_server.vocabulary import VocabLabel, Vocabulary

    with pytest.raises(ValueError, match="share"):
        _stored_vocabulary(ServerConfig(models=str(tiny_repo)), "parts")
    spec = f"disk:{tmp_path}"
    open_vocabularies(spec).create(
        "parts", Vocabulary("parts", [VocabLabel("bolt"), VocabLabel("nut")], "m").to_json()
    )
    cfg = ServerConfig(models=str(tiny_repo), vocabulary_store=spec)
    assert [lab.name for lab in _stored_vocabulary(cfg, "parts").labels] == ["bolt", "nut"]
    with pytest.raises(ValueError, match="no vocabulary"):
        _stored_vocabulary(cfg, "other")
