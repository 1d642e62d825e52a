"""seglabel as Label Studio's ML backend against seglabel's own tools, same server, same run:

1. pre-annotation throughput: a project of N images through a real Label Studio ("Retrieve
   predictions" on every task, until every prediction is in Label Studio, background posts
   included) vs ``seglabel label`` over a folder of the same images (other pixels in one corner, so
   neither run finds the other's embeddings cached);
2. interactive clicks: a keypoint through Label Studio's ML API (Label Studio -> seglabel ->
   Label Studio) vs the web page's click (POST /segment, points, on the cached upload), alternated.

Printed, never asserted. Needs ``make label-studio``.

    python scripts/bench_label_studio.py --models models --tasks 100 --grid 8 --masks 20
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import photo  # noqa: E402
from seglabel_api.datasets.job import dataset_request  # noqa: E402
from seglabel_client.bench import free_port  # noqa: E402
from seglabel_client.dataset import LabelOptions, label_folder_async  # noqa: E402
from seglabel_server.service.config import ServerConfig  # noqa: E402
from seglabel_server.transport.server import create_server  # noqa: E402

from tests.labelstudio import LabelStudio  # noqa: E402

LABELS = ["person", "car", "dog", "tree", "sky", "building"]


def variant(img: np.ndarray, i: int) -> bytes:
    out = img.copy()
    out[:2, :2] = (i * 37 % 256, i * 11 % 256, i // 256)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


async def run(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ls-"))
    img = photo(args.width, args.height)
    opts = {"points_per_side": args.grid, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
            "box_nms_thresh": 1.0, "max_masks": args.masks}  # fmt: skip
    folder, uploads = tmp / "folder", tmp / "uploads"
    folder.mkdir()
    uploads.mkdir()
    for i in range(args.tasks):
        (folder / f"img_{i:04d}.jpg").write_bytes(variant(img, i))
        (uploads / f"task_{i:04d}.jpg").write_bytes(variant(img, args.tasks + i))
    ls = await asyncio.to_thread(LabelStudio, tmp / "label-studio")
    port = free_port()
    key = tmp / "key"
    key.write_text(ls.token)
    server = await create_server(ServerConfig(port=0, http_port=port, models=args.models,
                                              label_studio_api_key_file=str(key)))  # fmt: skip
    await server.load()
    info = server.service.info()
    base = f"http://127.0.0.1:{port}"
    call = ls.acall
    try:
        config = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
                  + "".join(f'<Label value="{x}"/>' for x in LABELS) + "</BrushLabels>"
                  '<KeyPointLabels name="click" toName="image" smart="true"><Label value="person"/></KeyPointLabels></View>')  # fmt: skip
        project = (await call("project", title="bench", config=config))["id"]
        tasks = (await call("upload", project=project, files=[str(p) for p in sorted(uploads.iterdir())]))[
            "tasks"
        ]
        ml = await call("connect", project=project, url=f"{base}/label-studio", extra_params=opts)

        t0 = time.perf_counter()
        answered = (await call("retrieve", project=project))["seconds"]
        while (await call("count", project=project))["predictions"] < len(tasks):
            await asyncio.sleep(0.5)
        ls_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        report = await label_folder_async(folder, tmp / "out", f"127.0.0.1:{server.port}",
                                          LabelOptions(dataset_request(labels=tuple(LABELS), **opts)))  # fmt: skip
        cli_s = time.perf_counter() - t0
        assert report["labelled"] == args.tasks, report

        # clicks: the first task's upload is cached by both paths (its predictions segmented it); Label
        # Studio sends a task's predictions with each click, so also a task without any (its image warmed)
        task = sorted(tasks, key=lambda t: t["id"])[0]
        extra = tmp / "extra"
        extra.mkdir()
        (extra / "bare.jpg").write_bytes(
            (uploads / task["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[-1]).read_bytes()
        )
        bare = next(t for t in (await call("upload", project=project, files=[str(extra / "bare.jpg")]))["tasks"]
                    if t["id"] not in {x["id"] for x in tasks})  # fmt: skip
        w, h = args.width, args.height
        # the page uploads the file the user picked: the same bytes Label Studio serves, one cached embedding
        original = uploads / task["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[-1]
        up = await asyncio.to_thread(
            requests.post, f"{base}/upload", files={"image": ("x.jpg", original.read_bytes())}
        )
        fid = up.json()["file_id"]
        ls_ms, page_ms, bare_ms = [], [], []
        rng = np.random.default_rng(0)
        for i in range(args.clicks):
            x, y = float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9))
            ctx = {"result": [{"type": "keypointlabels", "from_name": "click", "to_name": "image", "original_width": w,
                               "original_height": h, "is_positive": True,
                               "value": {"x": 100 * x, "y": 100 * y, "keypointlabels": ["person"]}}]}  # fmt: skip
            if i == 0:  # the bare task's image read and encoded once, as the predicted one's was
                await call("interactive", ml=ml["id"], task=bare["id"], context=ctx)
            for which in ("ls", "bare", "page") if i % 2 == 0 else ("page", "bare", "ls"):
                if which in ("ls", "bare"):
                    got = await call(
                        "interactive", ml=ml["id"], task=(task if which == "ls" else bare)["id"], context=ctx
                    )
                    assert got["status"] == 200, got
                    (ls_ms if which == "ls" else bare_ms).append(got["seconds"] * 1000)
                    continue
                # the page's click body: the point, its labels, no overlay
                body = {"file_id": fid, "prompt_type": "points", "points": [{"x": x * w, "y": y * h, "positive": True}],
                        "multimask": False, "vocabulary": LABELS, "return_overlay": False}  # fmt: skip
                t0 = time.perf_counter()
                r = await asyncio.to_thread(requests.post, f"{base}/segment", json=body, timeout=120)
                page_ms.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
    finally:
        await server.stop(0)
        await asyncio.to_thread(ls.stop)
    models = ", ".join(f"{m['name']}" for m in info["models"])
    print(f"models: {models}{' (RANDOM WEIGHTS)' if info['random_weights'] else ''}; {args.tasks} images "
          f"{args.width}x{args.height}, grid {args.grid}, {args.masks} masks each, labels {len(LABELS)}")  # fmt: skip
    print(f"{'pre-annotation':<44} {'seconds':>8} {'tasks/s':>8}")
    print(f"{'Label Studio: Retrieve predictions, all in':<44} {ls_s:>8.1f} {args.tasks / ls_s:>8.2f}"
          f"   (its request answered after {answered:.1f} s)")  # fmt: skip
    print(f"{'seglabel label (COCO)':<44} {cli_s:>8.1f} {args.tasks / cli_s:>8.2f}")
    print(f"Label Studio / seglabel label: {cli_s / ls_s:.2f}x (goal >= 0.8x)")
    l50, p50 = statistics.median(ls_ms), statistics.median(page_ms)
    print(
        f"{'click (1 positive point, cached embedding)':<44} {'p50 ms':>8} {'min':>8} {'max':>8}   n={args.clicks}"
    )
    print(f"{'through Label Studio ML API':<44} {l50:>8.0f} {min(ls_ms):>8.0f} {max(ls_ms):>8.0f}")
    b50 = statistics.median(bare_ms)
    print(
        f"{'  the same on a task without predictions':<44} {b50:>8.0f} {min(bare_ms):>8.0f} {max(bare_ms):>8.0f}"
    )
    print(f"{'web page (POST /segment points)':<44} {p50:>8.0f} {min(page_ms):>8.0f} {max(page_ms):>8.0f}")
    print(
        f"Label Studio / web page: {l50 / p50:.2f}x, on a task without predictions {b50 / p50:.2f}x (goal <= 1.2x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--masks", type=int, default=20)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--skip-throughput", action="store_true", help="only the clicks (on a predicted task)")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
