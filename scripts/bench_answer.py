"""The answer path's host cost (issue 35): what a Segment answer costs outside the models, per stage,
for both benchmark inputs and both mask paths, on this machine.

Inputs (each a model repository of the full-size architectures, RANDOM weights):
- ``random``: ``seglabel-export export DIR --sam2 random:tiny``: masks as ragged as noise (tens of
  thousands of runs each);
- ``smooth``: ``--sam2 random-smooth:tiny`` (``seglabel_export.sources.smooth_masks``): the same
  architecture whose masks have trained-like run counts (hundreds to a few thousand).

Paths: ``ort-host`` (ONNX Runtime, numpy / Pillow per-mask work on the CPU pool: the embedded default)
and ``torch-device`` (CPU torch with the device mask path: the GPU code path, run here on the CPU).

The models run once per (input, path); their outputs are reused and each host stage is timed alone
(median of --repeat), the way the pipeline calls it: ``decode`` (the image file's bytes),
``prepare`` (the encoder's input), ``filter`` (the grid's candidate filter over every decoder call's
output), ``finish`` (upsample, box, area, COCO RLE), ``crops`` (CLIP inputs), ``score`` (labels from
the CLIP embeddings), ``protobuf`` (the SegmentResponse built) and ``serialize`` (its wire bytes).
Each stage is timed alone, then run again beside a Python thread that sleeps 1 ms at a time: the
share of its wake-ups that come late says how much of the stage held the GIL (or both cores: two busy
pool threads on 2 cores delay it too). Then the whole request in
process (``Loaded.run``), its own stage timings.

    python scripts/bench_answer.py --inputs random=models,smooth=models-smooth [--paths ort-host,torch-device]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time

import numpy as np
from benchlib import choose_iou, jpeg, photo
from seglabel_server import amg
from seglabel_server.backends import create_backend
from seglabel_server.models import images
from seglabel_server.models.kinds.sam2 import DecodeRequest
from seglabel_server.models.repository import ModelRepository
from seglabel_server.pipeline import masks as mask_ops
from seglabel_server.pipeline.parts import RequestState
from seglabel_server.service import build_pipeline
from seglabel_server.service.config import ServerConfig
from seglabel_server.service.params import plan_segment
from seglabel_server.transport.grpc import convert
from seglabel_server.types import RequestContext, SegmentOptions, SegmentResult

HOST_STAGES = ("decode", "prepare", "filter", "finish", "crops", "score", "protobuf", "serialize")
ANSWER_STAGES = ("filter", "finish", "crops", "score", "protobuf", "serialize")  # after the encoder


class GilProbe:
    """A Python thread that sleeps 1 ms at a time and notes how late it wakes: waking needs the GIL
    (and a core), so the share of late wake-ups while a stage runs says how much of that time the
    stage held the GIL (or both cores). It does almost no work itself, so it barely slows the stage
    (a spinning probe would: it holds the GIL for a whole switch interval each time)."""

    LATE_S = 0.0005

    def __init__(self):
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            time.sleep(0.001)
            t1 = time.perf_counter()
            self.samples.append((t1, t1 - t0 - 0.001 > self.LATE_S))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def rate(self, fn, *args) -> tuple[float, float]:
        """(seconds fn took, the share of the probe's wake-ups meanwhile that came late)."""
        n0, t0 = len(self.samples), time.perf_counter()
        fn(*args)
        t1 = time.perf_counter()
        late = [slow for t, slow in self.samples[n0:] if t <= t1]
        return t1 - t0, (sum(late) / len(late)) if late else 1.0


class Case:
    """One (input, path): the pipeline built, the models run once, each host stage callable alone."""

    def __init__(self, repo: ModelRepository, path: str, image: np.ndarray, grid: int, masks: int):
        if path == "ort-host":
            backend = create_backend("onnxruntime", repo)
            cfg = ServerConfig(embedding_cache_mb=0)
        else:
            backend = create_backend("torch", repo, "cpu", "fp32", mask_path="device")
            cfg = ServerConfig(backend="torch", embedding_cache_mb=0)
        self.loaded = build_pipeline(backend, repo, cfg)
        self.pipe = self.loaded.pipeline
        self.image = image
        self.jpeg = jpeg(image)
        iou, _ = choose_iou(backend, repo, image, grid, masks)
        self.params = SegmentOptions(points_per_side=grid, pred_iou_thresh=iou, stability_score_thresh=0.0,
                                     box_nms_thresh=1.0, max_masks=masks, return_overlay=False)  # fmt: skip
        self.job = plan_segment(cfg.pipeline, self.params, self.loaded.capabilities)
        self.ctx = RequestContext()
        self.models()

    def run(self, coro):
        return asyncio.run(coro)

    def req(self) -> RequestState:
        return RequestState(self.job, self.image, self.ctx, None)

    def models(self) -> None:
        """The models once (encoder, every decoder call, CLIP), their outputs kept."""
        pipe, p, hw = self.pipe, self.job.params, self.image.shape[:2]

        async def go():
            sched = pipe.scheduler
            x = await pipe.mask_path.encoder_input(self.req())
            feats = await sched.run("encoder", x, self.ctx)
            coords, labels, grid = mask_ops.prompts(p, hw, pipe.sam["image_size"])
            step = sched.max_batch("decoder")
            outs = [
                await sched.run("decoder", DecodeRequest(feats, coords[i : i + step], labels[i : i + step],
                                                         p.pred_iou_thresh, pipe.parts.multi_image), self.ctx)
                for i in range(0, len(coords), step)
            ]  # fmt: skip
            self.grid, self.outs, self.step = grid, outs, step
            self.cand = self.filter()
            self.results, self.full = await pipe.finish_masks(self.cand, hw, self.ctx)
            pix = await pipe.mask_path.crops(self.req(), self.results, self.full, self.ctx)
            self.emb = np.asarray(await sched.run("clip", pix, self.ctx), np.float32)
            self.scorer = await pipe.labels.scorer(self.job.labelling, self.ctx)

        self.run(go())

    # -- the host stages, each alone --------------------------------------------------------------
    def decode(self):
        return images.decode_image(self.jpeg)

    def prepare(self):
        return self.run(self.pipe.mask_path.encoder_input(self.req()))

    def filter(self):
        p = self.job.params
        cands = mask_ops.CandidateSet(
            p, self.grid, self.image.shape[:2], self.pipe.sam, self.pipe.mask_path.logits
        )
        for i, out in enumerate(self.outs):
            cands.add(out, i * self.step)
        return cands.result()

    def finish(self):
        return self.run(self.pipe.finish_masks(self.cand, self.image.shape[:2], self.ctx))

    def crops(self):
        return self.run(self.pipe.mask_path.crops(self.req(), self.results, self.full, self.ctx))

    def score(self):
        spec = self.job.labelling
        return self.scorer.classify(self.emb, 0, spec.top_k, spec.min_confidence)

    def answer(self) -> SegmentResult:
        h, w = self.image.shape[:2]
        return SegmentResult(width=w, height=h, masks=self.results, labels=self.score(), overlay_png=b"",
                             timings={"total": 1.0})  # fmt: skip

    def protobuf(self):
        return convert.result_to_pb(self._answer)

    def serialize(self):
        return self._pb.SerializeToString()

    def close(self) -> None:
        self.loaded.close()


def runs_per_mask(results) -> list[int]:
    out = []
    for m in results:
        flat = amg.decode_rle(m.rle).T.reshape(-1)
        out.append(int(np.count_nonzero(flat[1:] != flat[:-1])) + 1)
    return out


def measure(case: Case, repeat: int) -> dict:
    case._answer = case.answer()
    case._pb = case.protobuf()
    rows = {}
    for stage in HOST_STAGES:
        fn = getattr(case, stage)
        fn()  # warm
        times, late = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        with GilProbe() as probe:
            for _ in range(repeat):
                late.append(probe.rate(fn)[1])
        rows[stage] = (1000 * statistics.median(times), statistics.median(late))
    return rows


def served(case: Case, repeat: int) -> dict:
    """The whole request in process, its own stage timings (medians)."""
    timings = []
    for _ in range(repeat):
        res = case.run(case.loaded.run(case.params, case.image, RequestContext()))
        timings.append(res.timings)
    keys = [k for k in timings[0] if k not in ("queue",)]
    return {k: statistics.median(t.get(k, 0.0) for t in timings) for k in keys}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", default="random=models", help="NAME=REPOSITORY,...")
    ap.add_argument("--paths", default="ort-host,torch-device")
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--masks", type=int, default=50)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--served", type=int, default=2, help="whole requests in process per case (0: none)")
    args = ap.parse_args()
    image = photo(args.size, args.size)
    print(f"astronaut.jpg at {args.size}x{args.size}, grid {args.grid}, {args.masks} masks fixed by a "
          f"predicted-IoU threshold; RANDOM weights (masks and labels meaningless, their shapes are the "
          f"point of the 'smooth' input)", flush=True)  # fmt: skip
    summary = []
    for _ in (1,):
        for item in args.inputs.split(","):
            name, root = item.split("=", 1)
            repo = ModelRepository.load(root)
            for path in args.paths.split(","):
                case = Case(repo, path, image, args.grid, args.masks)
                runs = runs_per_mask(case.results)
                text = sum(len(m.rle["counts"]) for m in case.results)
                rows = measure(case, args.repeat)
                wire = len(case._pb.SerializeToString())
                print(f"\n[{name} / {path}] {len(case.results)} masks, runs per mask median "
                      f"{np.median(runs):.0f} (p90 {np.percentile(runs, 90):.0f}), RLE text "
                      f"{text / 1e3:.1f} kB, answer {wire / 1e3:.1f} kB on the wire, mean area "
                      f"{np.mean([m.area for m in case.results]) / image[..., 0].size:.2f} of the image")  # fmt: skip
                for stage, (ms, held) in rows.items():
                    print(f"  {stage:<10} {ms:8.2f} ms   GIL or cores busy {100 * held:5.1f}% of it")
                host = sum(rows[s][0] for s in ANSWER_STAGES)
                before = rows["decode"][0] + rows["prepare"][0]
                print(
                    f"  answer path (filter .. serialize) {host:.1f} ms; before the encoder "
                    f"(decode + prepare) {before:.1f} ms; all host stages {host + before:.1f} ms"
                )
                if args.served:
                    st = served(case, args.served)
                    print("  whole request in process: " + ", ".join(f"{k} {v:.0f}" for k, v in st.items()))
                summary.append((name, path, np.median(runs), wire, host, before))
                case.close()
    print("\ninput   path           runs/mask  answer kB  answer path ms  + decode/prepare ms")
    for name, path, runs, wire, host, before in summary:
        print(f"{name:<7} {path:<14} {runs:9.0f} {wire / 1e3:10.1f} {host:15.1f} {host + before:19.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
