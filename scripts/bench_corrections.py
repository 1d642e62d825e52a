"""The loop that learns, measured: label accuracy on held-out tasks before and after an annotator
corrects N tasks, through the Label Studio backend's own routes (``/label-studio/predict`` and the
``ANNOTATION_CREATED`` webhook, with the payloads Label Studio sends; the real Label Studio is in
``tests/integration/test_label_studio.py``), on the tests' synthetic labelled folder
(``test_labels_cli.image_folder``: a red disc, blue bars or a green box on noise, one per image).

An annotator's correction of a task: every predicted region that covers most of the object (half of
its pixels or more) relabelled to the truth where it is wrong, the regions that miss the object (under
a tenth of it) deleted, the others left as they are. Accuracy: of the held-out tasks' regions that
cover most of the object, the share labelled with the truth. Printed, never asserted.

    python scripts/bench_corrections.py --models models --per-label 12 --steps 0,1,2,4,8
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import sys
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seglabel_api.formats import labelstudio as ls  # noqa: E402
from seglabel_client.bench import free_port  # noqa: E402
from seglabel_server.service.config import ServerConfig  # noqa: E402
from seglabel_server.transport.server import create_server  # noqa: E402

COLOURS = {"red-disc": (220, 30, 30), "blue-bars": (20, 40, 200), "green-box": (30, 180, 60)}


def folder(per_label: int, seed: int = 0) -> list[tuple[str, bytes, np.ndarray]]:
    """(label, PNG, object mask) per image, drawn as test_labels_cli.image_folder draws them."""
    rng = np.random.default_rng(seed)
    out = []
    for label, colour in COLOURS.items():
        for _ in range(per_label):
            im = Image.fromarray((rng.random((96, 128, 3)) * 80 + 80).astype(np.uint8))
            truth = Image.new("L", im.size)
            x, y, r = rng.integers(30, 98), rng.integers(30, 66), rng.integers(14, 28)
            for d, fill in ((ImageDraw.Draw(im), colour), (ImageDraw.Draw(truth), 255)):
                (d.ellipse if label == "red-disc" else d.rectangle)([x - r, y - r, x + r, y + r], fill=fill)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            out.append((label, buf.getvalue(), np.asarray(truth) > 0))
    return out


async def run(args) -> None:
    port = free_port()
    server = await create_server(ServerConfig(port=0, http_port=port, models=args.models))
    await server.load()
    random_weights = server.service.info()["random_weights"]
    base = f"http://127.0.0.1:{port}"
    post = lambda path, body: asyncio.to_thread(requests.post, base + path, json=body, timeout=600)  # noqa: E731
    labels = list(COLOURS)
    config = (f'<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
              f'{"".join(f"<Label value={chr(34)}{x}{chr(34)}/>" for x in labels)}</BrushLabels></View>')  # fmt: skip
    project = {"id": 1, "label_config": config}
    if args.alpha or args.beta:  # the team's own settings for its project vocabulary
        await post(
            "/vocabularies",
            {"name": "label-studio-1", "labels": labels, "alpha": args.alpha, "beta": args.beta},
        )
    extra = {"points_per_side": args.grid, "pred_iou_thresh": 0, "stability_score_thresh": 0, "box_nms_thresh": 1.0,
             "max_masks": args.masks}  # fmt: skip
    assert (await post("/label-studio/setup", {"project": "1.1", "schema": config, "extra_params": extra})).ok
    data = folder(args.per_label)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(data))
    held_out = [int(i) for i in order[: len(data) // 2]]
    pool = [int(i) for i in order[len(data) // 2 :]]
    tasks = [{"id": i, "data": {"image": "data:image/png;base64," + base64.b64encode(png).decode()}}
             for i, (_, png, _) in enumerate(data)]  # fmt: skip

    async def predict(ids):
        r = await post(
            "/label-studio/predict",
            {"project": "1.1", "label_config": config, "tasks": [tasks[i] for i in ids]},
        )
        return dict(zip(ids, r.json()["results"]))

    def coverage(i, region) -> float:
        truth = data[i][2]
        return float((ls.brush_decode(region["value"]["rle"], *truth.shape) & truth).sum() / truth.sum())

    async def accuracy() -> tuple[float, int]:
        got = await predict(held_out)
        hits = total = 0
        for i, p in got.items():
            for r in p.get("result", []):
                if coverage(i, r) >= 0.5:
                    total += 1
                    hits += r["value"]["brushlabels"][0] == data[i][0]
        return hits / max(total, 1), total

    print(f"models {args.models}{' (RANDOM WEIGHTS: the mechanics, not real accuracy)' if random_weights else ''}; "
          f"{len(data)} images ({args.per_label} per label), {len(held_out)} held out; grid {args.grid}, "
          f"{args.masks} masks; vocabulary alpha {args.alpha or 'default'} beta {args.beta or 'default'}")  # fmt: skip
    print(f"{'corrected tasks':>16} {'examples':>9} {'accuracy':>9} {'regions':>8} {'learn s':>8}")
    done, annotation = 0, 0
    for step in [int(s) for s in args.steps.split(",")]:
        learn_s = 0.0
        batch = pool[done:step]
        if batch:
            predicted = await predict(batch)
            t0 = time.perf_counter()
            for i in batch:
                result = []
                for r in predicted[i].get("result", []):
                    c = coverage(i, r)
                    if c >= 0.5:
                        result.append({**r, "value": {**r["value"], "brushlabels": [data[i][0]]}})
                    elif c >= 0.1:
                        result.append(r)  # left as predicted
                annotation += 1
                body = {"action": "ANNOTATION_CREATED", "project": project, "task": tasks[i],
                        "annotation": {"id": annotation, "task": i, "result": result}}  # fmt: skip
                assert (await post("/label-studio/webhook", body)).status_code == 201
            while (await asyncio.to_thread(requests.get, base + "/label-studio/status", timeout=60)).json()[
                "learning"
            ]:
                await asyncio.sleep(0.1)
            learn_s = time.perf_counter() - t0
            done = step
        vocab = (
            await asyncio.to_thread(requests.get, base + "/vocabularies/label-studio-1", timeout=60)
        ).json()
        examples = sum(lab["positives"] + lab["negatives"] for lab in vocab["labels"])
        acc, regions = await accuracy()
        print(f"{done:>16} {examples:>9} {acc:>9.3f} {regions:>8} {learn_s:>8.2f}")
    await server.stop(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--per-label", type=int, default=12)
    ap.add_argument("--steps", default="0,1,2,4,8,18")
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--masks", type=int, default=6)
    ap.add_argument("--alpha", type=float, default=0.0)
    ap.add_argument("--beta", type=float, default=0.0)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
