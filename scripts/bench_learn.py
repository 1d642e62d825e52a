"""Labels that learn, measured: (1) the per-mask scoring cost of a vocabulary's examples (Tip-Adapter
cache) for 50 masks, with 0 and 1,000 examples, in process; (2) Relabel latency for 50 masks on a
running server (full-size models, RANDOM weights: speed only), p50 over 20 calls, server time
(RelabelResponse.timings.total_ms) and round trip, zero-shot and with 1,000 examples.

    python scripts/bench_learn.py --models models       (make bench-learn)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from benchlib import photo, server_process
from PIL import Image
from seglabel_client.bench import free_port
from seglabel_client.client import SegmenterClient, example
from seglabel_server.models.vocab import DEFAULT_VOCABULARY
from seglabel_server.pipeline.scoring import Scorer


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def scoring(masks: int, examples: int, dim: int, labels: int, runs: int) -> dict:
    """Scoring ``masks`` crop embeddings against ``labels`` labels, without and with ``examples``."""
    rng = np.random.default_rng(0)

    def unit(*shape):
        x = rng.standard_normal(shape).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    emb, text = unit(masks, dim), unit(labels, dim)
    keys = unit(examples, dim)
    values = np.zeros((examples, labels), np.float32)
    values[np.arange(examples), rng.integers(0, labels, examples)] = 1.0
    names = tuple(f"l{i}" for i in range(labels))
    zero = Scorer(names, text, 100.0)
    cached = Scorer(names, text, 100.0, keys=keys, values=values, alpha=10.0, beta=7.0)
    multi = Scorer(
        names, text, 100.0, "multi", keys, values, 10.0, 7.0, unit(dim), np.full(labels, 0.5, np.float32)
    )
    out = {}
    for name, s in (("zero_shot", zero), ("examples", cached), ("examples_multi", multi)):
        s.classify(emb, 0, 3, 0.0)  # warm
        out[name] = median_ms(lambda s=s: s.classify(emb, 0, 3, 0.0), runs)
    out["examples_scores_only"] = median_ms(lambda: cached.scores(emb), runs)
    return out


def relabel(models: str, masks: int, examples: int, calls: int, threads: int) -> dict:
    port = free_port()
    flags = ["--models", models, "--port", str(port), "--threads", str(threads)]
    with server_process(flags), SegmenterClient(f"127.0.0.1:{port}", timeout=600) as c:
        img = photo(1024, 1024)
        import io

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        fid = c.upload(buf.getvalue()).file_id
        seg = c.segment(file_id=fid, points_per_side=16, max_masks=masks, overlay=False, pred_iou_thresh=0.0,
                        stability_score_thresh=0.0, box_nms_thresh=1.0)  # fmt: skip
        n = len(seg.masks)
        info = c.server_info()
        c.create_vocabulary("bench", list(DEFAULT_VOCABULARY), replace=True)
        out = {"masks": n, "labels": len(DEFAULT_VOCABULARY), "random_weights": info.random_weights,
               "clip_model": info.clip_model}  # fmt: skip

        def p50(**kw):
            c.relabel(seg.request_id, **kw)  # text embeddings cached, vocabulary parsed
            server, trip = [], []
            for _ in range(calls):
                t0 = time.perf_counter()
                r = c.relabel(seg.request_id, **kw)
                trip.append((time.perf_counter() - t0) * 1000.0)
                server.append(r.timings.total_ms)
            return {"server_p50_ms": statistics.median(server), "round_trip_p50_ms": statistics.median(trip)}

        out["list_zero_shot"] = p50(labels=list(DEFAULT_VOCABULARY))
        out["vocabulary_0_examples"] = p50(vocabulary_name="bench")
        # Box examples (a CLIP run each): a mask of an answer would store its RLE as the source, and
        # random weights' masks are noisy (~60 KB of RLE each at 1 MP).
        per_label = examples // len(DEFAULT_VOCABULARY) + 1
        rng = np.random.default_rng(0)
        added, t0 = 0, time.perf_counter()
        for label in DEFAULT_VOCABULARY:
            k = min(per_label, examples - added)
            if k <= 0:
                break
            boxes = []
            for _ in range(k):
                x0, y0 = rng.integers(0, 900, 2)
                w, h = rng.integers(60, 124, 2)
                boxes.append((float(x0), float(y0), float(x0 + w), float(y0 + h)))
            c.add_examples("bench", label, [example(fid, box=b) for b in boxes])
            added += k
        out["add_examples_s"] = time.perf_counter() - t0
        out["examples"] = added
        out["stored_bytes"] = c.get_vocabulary("bench").stored_bytes
        out[f"vocabulary_{added}_examples"] = p50(vocabulary_name="bench")
        out[f"vocabulary_{added}_examples_multi"] = p50(vocabulary_name="bench", label_mode="multi")
        c.delete_vocabulary("bench")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="models")
    p.add_argument("--masks", type=int, default=50)
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--skip-server", action="store_true")
    args = p.parse_args()
    result = {"scoring_ms_per_call": scoring(args.masks, args.examples, 512, len(DEFAULT_VOCABULARY), 200)}
    s = result["scoring_ms_per_call"]
    result["added_cost_ms_for_examples"] = s["examples"] - s["zero_shot"]
    if not args.skip_server:
        result["relabel"] = relabel(args.models, args.masks, args.examples, args.calls, args.threads)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
