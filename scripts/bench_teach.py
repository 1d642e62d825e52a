"""The web page's first correction, timed as the page makes it (``app.js`` ``teach``): the page has
segmented a photo with the default vocabulary; the annotator types a new label for one mask; the page
creates the taught vocabulary from the labels in use, adds the mask as an example of the new label and
relabels the answer. Each HTTP call timed; full-size models, a fresh server. Printed, never asserted.

    python scripts/bench_teach.py --models models
"""

from __future__ import annotations

import argparse
import asyncio
import time

import requests
from seglabel_client import sample_image_bytes
from seglabel_client.bench import free_port
from seglabel_server.service.config import ServerConfig
from seglabel_server.transport.server import create_server


async def run(args) -> None:
    port = free_port()
    server = await create_server(ServerConfig(port=0, http_port=port, models=args.models))
    await server.load()
    base = f"http://127.0.0.1:{port}"

    def go() -> list[tuple[str, float]]:
        fid = requests.post(
            f"{base}/upload", files={"image": ("a.jpg", sample_image_bytes("astronaut.jpg"))}
        ).json()["file_id"]
        seg = requests.post(f"{base}/segment", json={"file_id": fid, "points_per_side": args.grid, "return_overlay": False,
                                                      "pred_iou_thresh": 0, "stability_score_thresh": 0,
                                                      "box_nms_thresh": 1, "max_masks": 10}).json()  # fmt: skip
        labels = requests.get(f"{base}/info").json()["default_vocabulary"]
        steps = []
        t0 = time.perf_counter()
        for name, call in [
            ("GET /vocabularies/page (404)", lambda: requests.get(f"{base}/vocabularies/page")),
            ("POST /vocabularies (the labels in use)", lambda: requests.post(f"{base}/vocabularies", json={"name": "page", "labels": labels})),
            ("POST /vocabularies/page/examples", lambda: requests.post(f"{base}/vocabularies/page/examples", json={
                "label": "part-7731", "examples": [{"request_id": seg["request_id"], "mask_index": 0}]})),
            ("POST /relabel", lambda: requests.post(f"{base}/relabel", json={"request_id": seg["request_id"], "vocabulary_name": "page"})),
        ]:  # fmt: skip
            t = time.perf_counter()
            r = call()
            assert r.status_code in (200, 404), r.text
            steps.append((name, (time.perf_counter() - t) * 1000))
        steps.append(("the correction in all", (time.perf_counter() - t0) * 1000))
        return [(f"default vocabulary: {len(labels)} labels", 0.0), *steps]

    steps = await asyncio.to_thread(go)
    await server.stop(0)
    for name, ms in steps:
        print(f"{name:<44} {ms:>10.0f} ms" if ms else name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--grid", type=int, default=8)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
