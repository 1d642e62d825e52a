"""GPU benchmark (issues 10 and 11), one process driving live servers: build full-size random-weight
models (hiera-tiny + ViT-B-32; hiera-large for the reference workload), check parity, then measure
OVER gRPC with seglabel-bench's own functions against a ``seglabel-server`` started per engine:

- parity: every engine's encoder / decoder / CLIP outputs against torch fp32 on the CPU (rel L2),
  and end to end: matched-mask mIoU and label agreement of each engine's answers against the fp32
  CPU host path on the same image;
- reference: sam2's SAM2AutomaticMaskGenerator (eager fp32) + one CLIP call per mask with PIL
  preprocessing, as the original application did, in this process, same image and settings;
- ours: for each engine (torch eager bf16/fp16 with the device mask path, torch compiled,
  AOTInductor packages (built first, their build time printed apart), ONNX Runtime CUDA with IO
  binding when onnxruntime-gpu is installed) and grid (16, 32): cold start to
  SERVING, then concurrency 1 / 8 / 32: p50 / p99 / images/s, the server's GPU memory and its stage
  breakdown; hiera-large at grid 32 alongside.

A 1024x1024 photo, ~--masks masks per image fixed by configuration (random weights: stability and NMS
off, a predicted-IoU threshold chosen from the data). Two benchmark inputs (--inputs), each with its
own rows: ``random`` (the random weights as built: masks as ragged as noise, ~58,000 runs each) and
``smooth`` (``random-smooth:``, ``seglabel_export.sources.smooth_masks``: the same architecture, masks
with trained-like run counts); each prints its answers' runs per mask and bytes per answer. Results go
to OUT as they come.

    python scripts/gpu_bench.py --out $OUT                                     # on a CUDA machine
    python scripts/gpu_bench.py --device cpu --sam2 tiny --clip tiny --large tiny --large-grid 4 \\
        --grids 4 --concurrency 1,2 --engines torch-fp32,ort-cpu --size 256   # dry run on a CPU
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from benchlib import StackSampler, choose_iou, photo
from PIL import Image
from seglabel_client.bench import free_port, run_level, summarize
from seglabel_client.client import SegmenterClient
from seglabel_export.aoti import build_packages
from seglabel_export.exporter import export_repository
from seglabel_export.parity import rel_l2
from seglabel_export.reference import PerMaskClip, reference_models, sam2_generator
from seglabel_server import amg
from seglabel_server.backends import create_backend
from seglabel_server.models import images, kinds
from seglabel_server.models.kinds import sam2
from seglabel_server.models.repository import ModelRepository
from seglabel_server.models.vocab import DEFAULT_VOCABULARY
from seglabel_server.service import build_pipeline
from seglabel_server.service.config import ServerConfig
from seglabel_server.types import RequestContext, SegmentOptions

# engine name -> server flags (device appended by the script)
ENGINES = {
    "torch-fp32": ["--backend", "torch", "--precision", "fp32"],
    "torch-bf16": ["--backend", "torch", "--precision", "bf16"],
    "torch-fp16": ["--backend", "torch", "--precision", "fp16"],
    "torch-bf16-compiled": [
        "--backend",
        "torch",
        "--precision",
        "bf16",
        "--torch-compile",
        "reduce-overhead",
    ],
    # AOTInductor packages built by `seglabel-export aot` before the server starts (the build time is
    # reported apart from the cold start, which then compiles nothing).
    "torch-bf16-aot": ["--backend", "torch", "--precision", "bf16", "--torch-compile", "aot"],
    "torch-fp32-aot": ["--backend", "torch", "--precision", "fp32", "--torch-compile", "aot"],
    "torch-fp32-compiled": ["--backend", "torch", "--precision", "fp32", "--torch-compile", "default"],
    "torch-bf16-host-masks": [
        "--backend",
        "torch",
        "--precision",
        "bf16",
        "--mask-path",
        "host",
        "--decoder-layout",
        "per-image",
        "--stage-workers",
        "one",
    ],
    "ort-cuda": ["--backend", "onnxruntime", "--ort-io-binding", "on"],
    "ort-cpu": ["--backend", "onnxruntime", "--ort-io-binding", "on"],  # the dry run's ORT row
}
CPU_ENGINES = ("torch-fp32", "torch-fp32-compiled", "torch-fp32-aot", "ort-cpu")  # the CPU's rows


class Report:
    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data: dict = {}
        self.lines: list[str] = []

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
        (self.out / "gpu_bench.txt").write_text("\n".join(self.lines) + "\n")

    def put(self, key: str, value) -> None:
        self.data[key] = value
        (self.out / "gpu_bench.json").write_text(json.dumps(self.data, indent=2, default=str))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int = 3) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def params_for(grid: int, iou: float, masks: int) -> SegmentOptions:
    return SegmentOptions(
        points_per_side=grid,
        pred_iou_thresh=iou,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        max_masks=masks,
        return_overlay=False,
    )


# ------------------------------------------------------------------------------------------- parity
def graph_parity(report: Report, repo: ModelRepository, backends: dict, image: np.ndarray, tag: str) -> None:
    """Each engine's model outputs against torch fp32 on the CPU."""
    cpu = create_backend("torch", repo, "cpu", "fp32", mask_path="host")
    s = repo.sam2["image_size"]
    x = images.sam_preprocess(image, s, repo.sam2["pixel_mean"], repo.sam2["pixel_std"])[None]
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, s, (16, 1, 2)).astype(np.float32)
    labels = np.ones((16, 1), np.int32)
    ref_f = sam2.encode(cpu, x)[0]
    ref_d = sam2.decode(cpu, ref_f, coords, labels)
    crops = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)
    ref_c = kinds.get("clip").execute(cpu, [crops])[0]
    rows = {}
    for name, be in backends.items():
        try:
            f = sam2.encode(be, x)[0]
            d = sam2.decode(be, f, coords, labels)
            rows[name] = {
                "image_embed": rel_l2(
                    be.to_host(f.arrays["image_embed"]), ref_f.arrays["image_embed"].numpy()
                ),
                "masks": rel_l2(d.masks.numpy(), ref_d.masks.numpy()),
                "iou": rel_l2(d.iou, ref_d.iou),
                "clip": rel_l2(kinds.get("clip").execute(be, [crops])[0], ref_c),
            }
        except Exception:
            report.say(f"parity {name}: FAILED\n" + traceback.format_exc())
            continue
        report.say(
            f"parity {name:<22} vs torch CPU fp32: "
            + ", ".join(f"{k} {v:.2e}" for k, v in rows[name].items())
        )
    report.put(f"graph_parity_{tag}", rows)


def run_pipeline(backend, repo, params, image):
    pipe = build_pipeline(backend, repo, ServerConfig(max_batch={"decoder": 256}))
    try:
        return asyncio.run(pipe.run(params, image, RequestContext()))
    finally:
        pipe.close()


def answers_parity(report: Report, name: str, ref, ours) -> dict:
    """Matched-mask mIoU (each reference mask paired with its best match) and label agreement."""
    from pycocotools import mask as mask_utils

    def rles(result):
        return [{"size": m.rle["size"], "counts": m.rle["counts"].encode("ascii")} for m in result.masks]

    if not ref.masks or not ours.masks:
        row = {
            "masks_ref": len(ref.masks),
            "masks": len(ours.masks),
            "miou": float("nan"),
            "labels_same": 0.0,
        }
    else:
        iou = np.asarray(mask_utils.iou(rles(ref), rles(ours), [0] * len(ours.masks)))
        best = iou.argmax(axis=1)
        same = [
            ref.labels[i].label == ours.labels[j].label
            for i, j in enumerate(best)
            if i < len(ref.labels) and j < len(ours.labels)
        ]
        row = {
            "masks_ref": len(ref.masks),
            "masks": len(ours.masks),
            "miou": float(iou.max(axis=1).mean()),
            "labels_same": float(np.mean(same)) if same else float("nan"),
        }
    report.say(
        f"answers {name:<22} vs fp32 CPU host path: masks {row['masks']} / {row['masks_ref']}, "
        f"matched mIoU {row['miou']:.4f}, same label {100 * row['labels_same']:.1f}%"
    )
    return row


def answer_shape(report: Report, backend, repo, params, image, name: str, answers=None) -> None:
    """How ragged the answer's masks are (runs per mask) and its size on the wire: the RLE and
    protobuf work of every engine. ``answers``: the fp32 CPU host path's, or run here on ``backend``
    (skipped when neither is given: parity prints it)."""
    if answers is None:
        if backend is None:
            return
        answers = run_pipeline(backend, repo, params, image)
    from seglabel_server.transport.grpc import convert

    rle = [amg.decode_rle(m.rle).T.reshape(-1) for m in answers.masks]
    runs = [int(np.count_nonzero(m[1:] != m[:-1])) + 1 for m in rle]
    text = sum(len(m.rle["counts"]) for m in answers.masks)
    wire = len(convert.result_to_pb(answers).SerializeToString())
    report.say(
        f"input {name}: answers of {len(runs)} masks, runs per mask median {np.median(runs) if runs else 0:.0f}, "
        f"{sum(runs)} runs and {text / 1e6:.2f} MB of RLE text in all, {wire / 1e6:.2f} MB per answer on the wire"
    )
    report.put(f"answers_{name}", {"runs_median": float(np.median(runs)) if runs else 0.0, "runs": sum(runs),
                                   "rle_bytes": text, "answer_bytes": wire})  # fmt: skip


def parity(
    report: Report, repo, engines: list[str], dev: str, fp32, image: np.ndarray, params, tag: str
) -> None:
    """Every engine's graphs against torch fp32 on the CPU, then its answers against the CPU host path."""
    precisions = [p for p in ("bf16", "fp16") if f"torch-{p}" in engines or f"torch-{p}-compiled" in engines]
    backends = {"torch fp32": fp32}
    if dev.startswith("cuda"):
        backends.update({f"torch {p}": create_backend("torch", repo, dev, p) for p in precisions})
    if "ort-cuda" in engines:
        backends["ort-cuda"] = create_backend("onnxruntime", repo, "cuda", io_binding=True)
    for engine in [e for e in engines if e.endswith("-aot") and (e in CPU_ENGINES) == (dev == "cpu")]:
        precision = aot_packages(report, repo.root, engine, dev)
        backends[engine] = create_backend("torch", repo, dev, precision, compile_mode="aot")
    graph_parity(report, repo, backends, image, tag)
    ref_answers = run_pipeline(
        create_backend("torch", repo, "cpu", "fp32", mask_path="host"), repo, params, image
    )
    answer_shape(report, None, repo, params, image, tag, ref_answers)
    rows = {}
    for name, be in backends.items():
        try:
            rows[name] = answers_parity(report, name, ref_answers, run_pipeline(be, repo, params, image))
        except Exception:
            report.say(f"answers {name}: FAILED\n" + traceback.format_exc())
    report.put(f"answers_parity_{tag}", rows)


# ------------------------------------------------------------------------------------------ profile
def profile_engine(report: Report, repo, engine: str, dev: str, image: np.ndarray, params, out: Path,
                   tag: str = "") -> None:  # fmt: skip
    """One engine in this process: 3 requests one after another, then 8 at once, under torch's
    profiler (the device's kernels, all threads) and a sampler of every thread's Python stack.
    Writes ``profile-<engine><tag>.txt`` (the sampled stacks, the kernels by device time) and a gzipped
    Chrome trace of the kernels."""
    import gzip

    from torch.profiler import ProfilerActivity, profile

    flags = dict(zip(ENGINES[engine][::2], ENGINES[engine][1::2]))
    precision = flags.get("--precision", "fp32")
    cfg = ServerConfig(
        backend="torch", device=dev, precision=precision, max_batch={"decoder": 256}, embedding_cache_mb=0
    )
    backend = create_backend("torch", repo, dev, precision)
    pipe = build_pipeline(backend, repo, cfg)

    async def burst(n: int) -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*[pipe.run(params, image, RequestContext()) for _ in range(n)])
        return time.perf_counter() - t0

    cuda = dev.startswith("cuda")
    try:
        for _ in range(2):
            asyncio.run(burst(1))
        with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
            with StackSampler() as single:
                one = [asyncio.run(burst(1)) for _ in range(3)]
            with StackSampler() as many:
                eight = asyncio.run(burst(8))
    finally:
        pipe.close()
    head = (
        f"{engine} in process: 3 single requests {', '.join(f'{t * 1000:.0f}' for t in one)} ms; "
        f"8 at once {eight * 1000:.0f} ms ({8 / eight:.2f} img/s)"
    )
    key = "device_time_total" if cuda else "cpu_time_total"
    text = [
        head,
        "Python stacks, 3 single requests:\n" + single.report(),
        "Python stacks, 8 at once:\n" + many.report(),
        prof.key_averages().table(sort_by=key, row_limit=30),
    ]
    (out / f"profile-{engine}{tag}.txt").write_text("\n\n".join(text) + "\n")
    trace = out / f"trace-{engine}{tag}.json"
    prof.export_chrome_trace(str(trace))
    with open(trace, "rb") as f, gzip.open(str(trace) + ".gz", "wb") as g:
        g.write(f.read())
    trace.unlink()
    report.say(head + f" (profile-{engine}{tag}.txt, trace-{engine}{tag}.json.gz)")


# ---------------------------------------------------------------------------------------- reference
def reference_pipeline(
    repo: ModelRepository, image: np.ndarray, grids: list[int], ious: dict, device: str
) -> dict:
    """sam2's AMG + one CLIP call per mask, fp32, per grid: {grid: (AMG seconds, CLIP seconds, masks)},
    nan where it failed. One warm-up and one timed run: on random weights each takes seconds."""
    out = {g: (float("nan"), float("nan"), 0) for g in grids}
    try:
        sam, clip = reference_models(repo.manifest, device)
        labeller = PerMaskClip(clip, DEFAULT_VOCABULARY, device=device)
        with torch.inference_mode():
            for grid in grids:
                gen = sam2_generator(sam, grid, ious[grid])
                t_amg, records = timed(lambda gen=gen: gen.generate(image), device, repeat=1)
                t_clip, _ = timed(lambda r=records: labeller(image, [x["bbox"] for x in r]), device, repeat=1)
                out[grid] = (t_amg, t_clip, len(records))
    except Exception:
        print("reference FAILED:\n" + traceback.format_exc(), flush=True)
    return out


# ------------------------------------------------------------------------------------- live servers
def gpu_used_mib() -> float:
    """Memory in use on GPU 0, all processes (nan without CUDA)."""
    if not torch.cuda.is_available():
        return float("nan")
    free, total = torch.cuda.mem_get_info(0)
    return (total - free) / 2**20


def gpu_memory_mib(pid: int, baseline_mib: float) -> float:
    """The server process's GPU memory: nvidia-smi's figure for its pid, or (where a container hides
    pids) the device's memory in use minus what was in use before the server started."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        mine = [float(m) for p, m in (line.split(",") for line in out.strip().splitlines()) if int(p) == pid]
        if mine:
            return sum(mine)
    except Exception:
        pass
    return gpu_used_mib() - baseline_mib


class Server:
    """One seglabel-server process on an ephemeral port; time from start to SERVING measured."""

    def __init__(self, repo_dir: Path, flags: list[str], device: str, log: Path):
        self.port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "seglabel_server",
            "--models",
            str(repo_dir),
            "--port",
            str(self.port),
        ]
        # No embedding cache: the bench sends one image over and over, and every request must run the
        # encoder, as the reference does (with the cache, the encoder ran once per server).
        cmd += flags + ["--device", device, "--max-inflight", "256", "--max-batch-decoder", "256"]
        cmd += ["--embedding-cache-mb", "0"]
        self.log = open(log, "w")
        self.baseline_mib = gpu_used_mib()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            with SegmenterClient(f"127.0.0.1:{self.port}") as c:
                c.wait_ready(timeout=900)
        except Exception:
            self.stop()
            raise RuntimeError(f"server did not become ready; see {log}") from None
        self.cold_start_s = time.perf_counter() - t0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def measure(
    report: Report,
    server: Server,
    image_file: Path,
    grid: int,
    iou: float,
    masks: int,
    conc: list[int],
    requests: int,
) -> list[dict]:
    kw = SegmentOptions(points_per_side=grid, max_masks=masks, pred_iou_thresh=iou,
                        stability_score_thresh=0.0, box_nms_thresh=1.0)  # fmt: skip
    image = image_file.read_bytes()
    rows = []
    for c in conc:
        n = requests or max(16, 2 * c)
        samples, errors, wall = asyncio.run(run_level(f"127.0.0.1:{server.port}", [image], c, n, 2, kw))
        r = summarize("", c, samples, errors, wall)
        rows.append(
            {
                "concurrency": c,
                "requests": r.requests,
                "errors": r.errors,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "images_per_s": r.throughput_rps,
                "masks": r.masks_per_request,
                "gpu_mib": gpu_memory_mib(server.proc.pid, server.baseline_mib),
                "stages_p50_ms": r.server_stages_p50_ms,
                "queue_p50_ms": r.server_queue_p50_ms,
            }
        )
    return rows


_BUILT: set = set()


def aot_packages(report: Report, repo_dir: Path, engine: str, device: str) -> str:
    """``seglabel-export aot`` for an ``*-aot`` engine (once per repository and precision); its
    time is reported apart from the server's cold start. Returns the precision."""
    precision = engine.split("-")[1]
    if (repo_dir, precision) not in _BUILT:
        t0 = time.perf_counter()
        built = build_packages(repo_dir, device, precision, log=lambda m: None)
        report.say(
            f"{repo_dir.name} {engine}: {len(built)} AOTInductor packages built in "
            f"{time.perf_counter() - t0:.1f}s (seglabel-export aot, once per machine)"
        )
        _BUILT.add((repo_dir, precision))
    return precision


# -------------------------------------------------------------------------------------------- main
class Bench:
    """One run: its arguments, report, photo and result rows."""

    def __init__(self, args, report: Report, image: np.ndarray):
        self.args, self.report, self.dev, self.image = args, report, args.device, image
        self.image_file = Path(args.out) / f"photo_{args.size}.png"
        Image.fromarray(image).save(self.image_file)
        self.results: list[dict] = []

    def add(self, row: dict) -> None:
        self.results.append(row)
        self.report.put("results", self.results)

    def reference_rows(self, model: str, repo, grids: list[int], ious: dict) -> dict:
        """The reference per grid; returns {grid: (iou, reference seconds)} for the speed-up column."""
        ref_for = {}
        for grid, (t_amg, t_clip, n) in reference_pipeline(repo, self.image, grids, ious, self.dev).items():
            total = t_amg + t_clip
            self.report.say(
                f"{model} grid {grid}: reference sam2 AMG fp32 {t_amg * 1000:.0f} ms + {n} per-mask CLIP calls "
                f"{t_clip * 1000:.0f} ms = {total * 1000:.0f} ms per image"
            )
            self.add({"model": model, "grid": grid, "engine": "reference (AMG fp32 + per-mask CLIP)",
                      "concurrency": 1, "p50_ms": total * 1000, "p99_ms": float("nan"),
                      "images_per_s": 1 / total, "masks": n, "ref_s": total})  # fmt: skip
            ref_for[grid] = (ious[grid], total)
        return ref_for

    def serve_and_measure(self, model: str, rdir: Path, engine: str, ref_for: dict, conc: list[int]) -> None:
        """A live server of ``engine``: cold start, then every grid of ``ref_for`` at ``conc``."""
        log = Path(self.args.out) / f"server-{model.replace('/', '-')}-{engine}.log"
        try:
            if engine.endswith("-aot"):
                aot_packages(self.report, rdir, engine, self.dev)
            server = Server(rdir, ENGINES[engine], self.dev, log)
        except Exception as exc:
            self.report.say(f"{model} {engine}: {exc}")
            return
        self.report.say(f"{model} {engine}: cold start to SERVING {server.cold_start_s:.1f}s")
        try:
            for grid, (iou, ref_s) in ref_for.items():
                rows = measure(
                    self.report, server, self.image_file, grid, iou, self.args.masks, conc, self.args.requests
                )
                for row in rows:
                    row.update(model=model, grid=grid, engine=engine, cold_start_s=server.cold_start_s,
                               speedup=row["images_per_s"] * ref_s)  # fmt: skip
                    self.add(row)
                    st = " ".join(f"{k} {v:.0f}" for k, v in row["stages_p50_ms"].items() if v == v and v > 0)
                    self.report.say(
                        f"{model} grid {grid} {engine:<22} c={row['concurrency']:<3} p50 {row['p50_ms']:7.1f} ms "
                        f"p99 {row['p99_ms']:7.1f} ms {row['images_per_s']:7.2f} img/s ({row['speedup']:.1f}x ref) "
                        f"masks {row['masks']:.0f} err {row['errors']} gpu {row['gpu_mib']:.0f} MiB | {st}"
                    )
        except Exception:
            self.report.say(f"{model} {engine}: FAILED while measuring\n" + traceback.format_exc())
        finally:
            server.stop()

    def runs_here(self, engine: str) -> bool:
        return (self.dev == "cpu") == (engine in CPU_ENGINES)


def smooth_source(source: str) -> str | None:
    """The ``--sam2`` source of the realistic-masks input (``random-smooth:``) for a random one."""
    if source == "tiny":
        return "tiny-smooth"
    return source.replace("random:", "random-smooth:", 1) if source.startswith("random:") else None


def tiny_rows(bench: Bench, engines: list[str], grids: list[int], conc: list[int], name: str) -> None:
    """hiera-tiny on input ``name`` (random: ragged masks; smooth: trained-like run counts): profile,
    parity, the reference and every engine at every grid."""
    args, report, dev, image = bench.args, bench.report, bench.dev, bench.image
    source = args.sam2 if name == "random" else smooth_source(args.sam2)
    if source is None:
        report.say(f"input {name}: only for random weights (--sam2 {args.sam2} is a checkpoint), skipped")
        return
    t0 = time.perf_counter()
    onnx = any(e.startswith("ort-") for e in engines)
    tiny_dir = Path(f"{TINY_DIR}-{name}")
    manifest = export_repository(tiny_dir, source, args.clip, write_onnx=onnx, log=lambda m: None)
    repo = ModelRepository(Path(manifest["_root"]), manifest)
    model = f"hiera-tiny/{name}"
    report.say(
        f"input {name}: models built in {time.perf_counter() - t0:.1f}s "
        f"({manifest['sam2']['spec']['architecture']}, {manifest['clip']['spec']['architecture']})"
    )
    fp32 = create_backend("torch", repo, dev, "fp32")
    ious = {grid: choose_iou(fp32, repo, image, grid, args.masks)[0] for grid in grids}
    params = params_for(grids[0], ious[grids[0]], args.masks)
    for engine in [e for e in args.profile.split(",") if e]:
        try:
            profile_engine(report, repo, engine, dev, image, params, Path(args.out), f"-{name}")
        except Exception:
            report.say(f"profile {engine}: FAILED\n" + traceback.format_exc())
    if not args.no_parity:
        try:
            parity(report, repo, engines, dev, fp32, image, params, name)
        except Exception:  # the speed rows still run; the traceback says what broke
            report.say("parity FAILED:\n" + traceback.format_exc())
    answer_shape(report, fp32 if args.no_parity else None, repo, params, image, name)
    del fp32
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    ref_for = bench.reference_rows(model, repo, grids, ious)
    for engine in engines:
        if not bench.runs_here(engine):
            report.say(f"{engine}: {'needs CUDA' if dev == 'cpu' else 'a CPU engine'}, skipped on {dev}")
            continue
        bench.serve_and_measure(model, tiny_dir, engine, ref_for, conc)


def large_rows(bench: Bench, engines: list[str], conc: list[int]) -> None:
    """hiera-large at --large-grid: the reference workload, for the engines that serve it."""
    args, report = bench.args, bench.report
    t0 = time.perf_counter()
    lm = export_repository(LARGE_DIR, args.large, args.clip, write_onnx=False, log=lambda m: None)
    lrepo = ModelRepository(Path(lm["_root"]), lm)
    report.say(f"large model built in {time.perf_counter() - t0:.1f}s ({lm['sam2']['spec']['architecture']})")
    lg = args.large_grid
    iou = choose_iou(create_backend("torch", lrepo, bench.dev, "fp32"), lrepo, bench.image, lg, args.masks)[0]
    ref_for = bench.reference_rows("hiera-large", lrepo, [lg], {lg: iou})
    large = ("torch-bf16", "torch-bf16-compiled", "torch-bf16-aot", "torch-fp32", "torch-fp32-aot")
    for engine in [e for e in engines if e in large and bench.runs_here(e)]:
        bench.serve_and_measure("hiera-large", LARGE_DIR, engine, ref_for, conc[:2])


def summary(report: Report, results: list[dict]) -> None:
    report.say()
    head = f"{'model':<11} {'grid':>4} {'engine':<38} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'img/s':>7} {'vs ref':>7} {'masks':>5} {'GPU MiB':>8} {'cold s':>6}"
    report.say(head)
    for r in results:
        report.say(
            f"{r['model']:<11} {r['grid']:>4} {r['engine']:<38} {r['concurrency']:>4} {r['p50_ms']:>8.1f} "
            f"{r['p99_ms']:>8.1f} {r['images_per_s']:>7.2f} {r.get('speedup', 1.0):>6.1f}x {r['masks']:>5.0f} "
            f"{r.get('gpu_mib', float('nan')):>8.0f} {r.get('cold_start_s', float('nan')):>6.1f}"
        )
    report.say("Targets (H100, issue 10): grid 16 + 50 labels >= 35 img/s at c=32, p50 <= 60 ms at c=1;")
    report.say("(issue 11): grid 16 p50 <= 20 ms at c=1 and >= 100 img/s at c=32, grid 32 p50 <= 40 ms,")
    report.say("hiera-large grid 32 p50 < 123 ms, cold start < 60 s.")


def available_engines(report: Report, args) -> list[str]:
    """--engines, less ort-cuda where ONNX Runtime has no CUDA provider; prints what runs where."""
    engines = [e for e in args.engines.split(",") if e]
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        ort_line = f"onnxruntime {ort.__version__} providers {providers}"
    except ImportError:
        providers, ort_line = [], "onnxruntime not installed"
    gpu = f" ({torch.cuda.get_device_name(0)})" if args.device.startswith("cuda") else ""
    report.say(f"torch {torch.__version__}, device {args.device}{gpu}; {ort_line}")
    report.say("RANDOM weights of the full-size architectures: speed is real, masks and labels are not.")
    if "ort-cuda" in engines and "CUDAExecutionProvider" not in providers:
        report.say("ort-cuda: skipped (no CUDAExecutionProvider: install onnxruntime-gpu; see gpu_bench.sh)")
        engines.remove("ort-cuda")
    return engines


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-results/gpu")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sam2", default="random:tiny")
    ap.add_argument("--clip", default="random:ViT-B-32")
    ap.add_argument(
        "--large", default="random:large", help='hiera-large source for the reference workload ("": skip)'
    )
    ap.add_argument("--grids", default="16,32", help='hiera-tiny grids ("": the hiera-large rows alone)')
    ap.add_argument(
        "--large-grid", type=int, default=32, help="grid of the hiera-large rows (the reference workload)"
    )
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=0, help="per level (default: max(16, 2 x concurrency))")
    ap.add_argument("--masks", type=int, default=50)
    ap.add_argument(
        "--engines",
        default="torch-bf16,torch-fp16,torch-bf16-compiled,torch-bf16-aot,ort-cuda,torch-bf16-host-masks",
        help=f"server engines, of {', '.join(ENGINES)}",
    )
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument(
        "--inputs",
        default="random,smooth",
        help="benchmark inputs: random (random weights: masks as ragged as noise), smooth (random-smooth: "
        "the same architecture, masks with trained-like run counts)",
    )
    ap.add_argument(
        "--no-parity", action="store_true", help="skip the parity checks (a later call of a split run)"
    )
    ap.add_argument(
        "--profile",
        default="",
        help="engines (torch eager ones) to profile in this process first, at the first grid",
    )
    return ap.parse_args()


TINY_DIR = Path("/tmp/seglabel-gpu-models")
LARGE_DIR = Path("/tmp/seglabel-gpu-models-large")


def main() -> int:
    args = parse_args()
    report = Report(Path(args.out))
    engines = available_engines(report, args)
    grids = [int(g) for g in args.grids.split(",") if g]
    conc = [int(c) for c in args.concurrency.split(",")]
    bench = Bench(args, report, photo(args.size, args.size))
    for name in [i for i in args.inputs.split(",") if i] if grids else []:
        tiny_rows(bench, engines, grids, conc, name)
    if args.large:
        large_rows(bench, engines, conc)
    summary(report, bench.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
