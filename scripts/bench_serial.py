"""Is there a serial step across requests? (issue 35) The server with zero-cost models
(``zero_backend.ZeroCostBackend``: every model's outputs recorded once, then replayed at no cost),
measured over gRPC at concurrency 1 and 32: with the models free, whatever limits throughput is the
server's own work (decoding images, the answer path, protobuf, gRPC, the scheduler). On this 2-core
machine the goal is images/s at c=32 >= 1.6 x c=1.

The server runs in a child process (``--serve``) on the repository's models as recorded by ONNX
Runtime on the benchmark's photo; the client (seglabel-bench's functions) drives it from this one.
``--profile`` samples every thread's Python stack in the server during each level and prints the
most sampled ones (where the time goes).

    python scripts/bench_serial.py --models models-smooth [--grid 16] [--masks 50] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import jpeg, photo, server_process

HERE = Path(__file__).resolve().parent


def serve(args) -> int:
    """The child: a seglabel-server whose models are zero-cost (``open_backend`` replaced in this
    process only), sampling its threads' stacks when asked (SIGUSR1: write the samples so far to
    ``--profile-out``.N and start again)."""
    sys.path.insert(0, str(HERE))
    from benchlib import StackSampler, choose_iou
    from seglabel_server.backends import create_backend
    from seglabel_server.models.repository import ModelRepository
    from seglabel_server.service import loading
    from seglabel_server.transport import server
    from zero_backend import ZeroCostBackend

    image = photo(args.size, args.size)
    repo = ModelRepository.load(args.models)
    real = create_backend("onnxruntime", repo)
    iou, _ = choose_iou(real, repo, image, args.grid, args.masks)
    zero = ZeroCostBackend(repo, real, image, args.grid)
    real.close()
    loading.open_backend = lambda repo, cfg, models=None: zero
    Path(args.ready).write_text(json.dumps({"iou": iou}))
    if args.profile_out:
        state = {"sampler": StackSampler().__enter__(), "n": 0}

        def dump(*_):
            s = state["sampler"]
            s.__exit__()
            Path(f"{args.profile_out}.{state['n']}").write_text(s.report(args.profile_top))
            state["n"] += 1
            state["sampler"] = StackSampler().__enter__()

        signal.signal(signal.SIGUSR1, dump)
    # SIGUSR2: the Python threads' names by native id, for the CPU per thread
    signal.signal(signal.SIGUSR2, lambda *_: Path(args.ready + ".threads").write_text(
        json.dumps({t.native_id: t.name for t in threading.enumerate()})
    ))  # fmt: skip
    flags = ["--models", args.models, "--port", str(args.port), "--max-inflight", "128",
             "--embedding-cache-mb", "0", "--log-level", "warning"]  # fmt: skip
    return server.main(flags)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Per thread of a process (native id): its kernel name (``comm``) and CPU seconds so far, the
    threads no Python sampler sees (gRPC's) included."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return out


def cpu_by_thread(before: dict, after: dict, names: dict[int, str]) -> dict[str, float]:
    """CPU seconds between two :func:`thread_cpu` readings, summed per thread name: the Python
    name (numbered pool threads as one) where ``names`` (native id -> Python name) has it."""
    out: dict[str, float] = {}
    for tid, (comm, cpu) in after.items():
        name = names.get(tid, comm)
        name = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
        out[name] = out.get(name, 0.0) + cpu - before.get(tid, (comm, 0.0))[1]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--masks", type=int, default=50)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--requests", type=int, default=0, help="per level (default: max(24, 3 x concurrency))")
    ap.add_argument("--labels", choices=("on", "off"), default="on")
    ap.add_argument("--profile", action="store_true", help="sample the server's threads during each level")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--ready", default="", help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args)

    from seglabel_client.bench import free_port, run_level, summarize
    from seglabel_server.types import SegmentOptions

    work = Path(tempfile.mkdtemp(prefix="bench-serial-"))
    port = free_port()
    ready = work / "ready.json"
    flags = ["--serve", "--port", str(port), "--ready", str(ready), "--models", args.models, "--grid", str(args.grid),
             "--masks", str(args.masks), "--size", str(args.size), "--profile-top", str(args.profile_top)]  # fmt: skip
    if args.profile:
        flags += ["--profile-out", str(work / "profile")]
    with server_process(
        flags, str(work / "server.log"), [sys.executable, str(Path(__file__).resolve())]
    ) as proc:
        iou = json.loads(ready.read_text())["iou"]
        image = photo(args.size, args.size)
        data = jpeg(image)
        opts = SegmentOptions(points_per_side=args.grid, pred_iou_thresh=iou, stability_score_thresh=0.0,
                              box_nms_thresh=1.0, max_masks=args.masks, return_overlay=False,
                              skip_labels=args.labels == "off")  # fmt: skip
        print(f"zero-cost models (outputs of {args.models} recorded once), {args.size}x{args.size} JPEG, "
              f"grid {args.grid}, {args.masks} masks, labels {args.labels}; server and client on this "
              f"machine's {os.cpu_count()} cores", flush=True)  # fmt: skip
        rows = []
        for i, conc in enumerate(int(c) for c in args.concurrency.split(",")):
            n = args.requests or max(24, 3 * conc)
            if args.profile:  # drop what the warm-up and the previous level sampled
                os.kill(proc.pid, signal.SIGUSR1)
                time.sleep(0.2)
            cpu0, me0, threads0 = cpu_seconds(proc.pid), time.process_time(), thread_cpu(proc.pid)
            samples, errors, wall = asyncio.run(run_level(f"127.0.0.1:{port}", [data], conc, n, 2, opts))
            server_cores = (cpu_seconds(proc.pid) - cpu0) / wall
            client_cores = (time.process_time() - me0) / wall
            r = summarize("zero-cost", conc, samples, errors, wall)
            rows.append(r)
            stages = " ".join(f"{k} {v:.1f}" for k, v in r.server_stages_p50_ms.items() if v == v and v > 0)
            print(f"c={conc:<3} {r.requests} requests, {r.errors} errors: {r.throughput_rps:6.2f} images/s, "
                  f"p50 {r.p50_ms:7.1f} ms, p99 {r.p99_ms:7.1f} ms, masks {r.masks_per_request:.0f}; "
                  f"server queue p50 {r.server_queue_p50_ms:.1f} ms; stages p50 (ms): {stages}", flush=True)  # fmt: skip
            print(f"       cores busy: server {server_cores:.2f}, client {client_cores:.2f} (of {os.cpu_count()}); "
                  f"server CPU per image {server_cores / max(r.throughput_rps, 1e-9) * 1000:.0f} ms", flush=True)  # fmt: skip
            threads1 = thread_cpu(proc.pid)
            names_file = Path(str(ready) + ".threads")
            names_file.unlink(missing_ok=True)
            os.kill(proc.pid, signal.SIGUSR2)
            for _ in range(50):
                if names_file.exists() and names_file.stat().st_size:
                    break
                time.sleep(0.1)
            names = (
                {int(k): v for k, v in json.loads(names_file.read_text()).items()}
                if names_file.exists()
                else {}
            )
            used = cpu_by_thread(threads0, threads1, names)
            images = r.throughput_rps * wall
            print("       server CPU per image by thread (ms): " + ", ".join(
                f"{k} {1000 * v / max(images, 1):.0f}" for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v > 0
            ), flush=True)  # fmt: skip
            if args.profile:
                os.kill(proc.pid, signal.SIGUSR1)
                out = work / f"profile.{2 * i + 1}"
                for _ in range(50):
                    if out.exists():
                        break
                    time.sleep(0.1)
                print(f"  where the server's threads were during c={conc} (sampled stacks, innermost first):")
                print("  " + out.read_text().replace("\n", "\n  ") if out.exists() else "  (no profile)")
        if len(rows) >= 2:
            ratio = rows[-1].throughput_rps / max(rows[0].throughput_rps, 1e-9)
            print(
                f"throughput c={rows[-1].concurrency} / c={rows[0].concurrency}: {ratio:.2f}x (goal >= 1.6x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
