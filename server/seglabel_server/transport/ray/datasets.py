"""``seglabel-ray label INPUT --out OUT``: ``seglabel label`` on Ray Data. INPUT is a local folder or
any URI pyarrow's filesystems read (``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``). The
driver lists INPUT (the same inventory as the command line: images by their bytes, duplicates
once, ids from the sorted names), then a ``map_batches`` actor pool labels the images that the
journal does not hold yet: each actor loads one model set (the whole service, CPU or GPU) and runs
a batch of images at once through it, so that its encoder batches them. Records stream back to the
driver, which journals each as it arrives and at the end writes the same COCO / YOLO-seg files as
the command line (same ids, same annotations). An actor that dies is restarted by Ray and its
batch run again; a record that arrives twice is journalled once.

    seglabel-ray label photos/ --out labelled/ --actors 2 --num-cpus 1 -- --models models
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import types
from pathlib import Path

import numpy as np
from seglabel_api import flags
from seglabel_api import options as request_options
from seglabel_api.datasets import annotations as records
from seglabel_api.datasets.files import inventory_of
from seglabel_api.datasets.job import LabelOptions, Progress, canonical_job, finish, progress_bar
from seglabel_api.datasets.journal import JobMismatch, Journal

from seglabel_server.models.repository import ModelRepository
from seglabel_server.service import SeglabelService
from seglabel_server.service.config import (
    ConfigError,
    ServerConfig,
    add_flags,
    apply_settings,
    settings_from_args,
)
from seglabel_server.transport.grpc import convert
from seglabel_server.transport.grpc.interceptor import TRANSIENT, grpc_status
from seglabel_server.types import RequestContext

log = logging.getLogger(__name__)


def resolve(uri: str):
    """(pyarrow filesystem, base path, local Path or None) for a folder or a URI."""
    from pyarrow import fs as pafs

    if "://" not in uri:
        local = Path(uri).resolve()
        return pafs.LocalFileSystem(), str(local), local
    filesystem, base = pafs.FileSystem.from_uri(uri)
    return filesystem, base.rstrip("/"), None


def list_files(filesystem, base: str, exclude: str | None = None) -> list[str]:
    from pyarrow import fs as pafs

    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    names = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        if exclude and (info.path == exclude or info.path.startswith(exclude.rstrip("/") + "/")):
            continue
        names.append(info.path[len(base) :].lstrip("/"))
    return sorted(names)


class LabelActor:
    """One model set: the service loaded in this actor, images read from INPUT by name."""

    def __init__(self, server: dict, uri: str, options: LabelOptions):
        cfg = ServerConfig(port=0)
        apply_settings(cfg, dict(server), "seglabel-ray label")
        self.loop = asyncio.new_event_loop()
        self.service = SeglabelService(cfg)
        self.loop.run_until_complete(self.service.load())
        self.fs, self.base, _ = resolve(uri)
        self.opts = options
        self.params = options.segment_request()

    def _read(self, name: str) -> bytes:
        with self.fs.open_input_stream(f"{self.base}/{name}") as f:
            return f.read()

    async def _one(self, sha: str, name: str) -> str:
        try:
            data = await asyncio.to_thread(self._read, name)
            result = await self.service.segment(self.params, None, data, RequestContext())
            rec = await asyncio.to_thread(records.image_record, convert.result_to_pb(result), sha, self.opts)
        except Exception as exc:  # the image's failure, recorded
            code, message = grpc_status(exc)  # worded as the gRPC client's failures are
            rec = {"sha": sha, "ok": False, "reason": f"{code.name}: {message}", "retry": code in TRANSIENT}
        return json.dumps(rec, separators=(",", ":"))

    def __call__(self, batch: dict) -> dict:
        async def run():
            return await asyncio.gather(*(self._one(s, n) for s, n in zip(batch["sha"], batch["name"])))

        return {"record": np.array(self.loop.run_until_complete(run()), dtype=object)}


def _server_info(server: dict):
    """What the report and COCO info say of the models (the manifest's), without loading them."""
    cfg = ServerConfig(port=0)
    apply_settings(cfg, dict(server), "seglabel-ray label")
    repo = ModelRepository.load(cfg.models)
    models = [
        types.SimpleNamespace(name=m["name"], architecture=m["architecture"]) for m in repo.models_info()
    ]
    return cfg, types.SimpleNamespace(models=models, random_weights=bool(repo.random_weights))


def _stored_vocabulary(cfg: ServerConfig, name: str):
    """The stored vocabulary the actors will label with: their store must be one they share."""
    from seglabel_server.storage.vocabularies import MemoryVocabularies, open_vocabularies
    from seglabel_server.vocabulary import Vocabulary

    store = open_vocabularies(cfg.vocabulary_store or cfg.upload_store)
    try:
        if isinstance(store, MemoryVocabularies):
            raise ValueError(
                "--vocabulary-name needs a store the actors share: --vocabulary-store disk:PATH or redis://"
            )
        got = store.get(name)
        if got is None:
            raise ValueError(f"no vocabulary {name!r} in {store.describe()}")
        return Vocabulary.from_json(got[1])
    finally:
        store.close()


def label(uri: str, out: str | Path, options, server: dict, actors: int = 1, num_cpus: float = 1.0,
          num_gpus: float = 0.0, batch_size: int = 4, restart: bool = False, progress=None,
          memory_bytes: int = 0) -> dict:  # fmt: skip
    """Label INPUT into OUT on the Ray cluster this process is connected to (``ray.init`` first);
    returns the report, as ``seglabel label`` does."""
    import dataclasses

    import ray

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    filesystem, base, local = resolve(uri)
    exclude = str(out.resolve()) if local is not None else None
    names = list_files(filesystem, base, exclude)
    inv = inventory_of(names, lambda name: filesystem.open_input_stream(f"{base}/{name}"))
    cfg, info = _server_info(server)
    request = options.request
    if request.skip_labels:
        categories = ["object"]
    elif request.vocabulary_name:
        vocab = _stored_vocabulary(cfg, request.vocabulary_name)
        categories = [lab.name for lab in vocab.labels]
        options = dataclasses.replace(options, vocabulary_revision=vocab.revision)
    else:
        categories = list(request.vocabulary or cfg.pipeline.vocabulary)
        options = dataclasses.replace(
            options, request=dataclasses.replace(request, vocabulary=tuple(categories))
        )
    journal = Journal(out / "journal.jsonl", options.job(), restart=restart, canonical=canonical_job)
    todo = [{"sha": item.sha, "name": item.names[0]} for item in inv.items if journal.pending(item.sha)]
    prog = Progress(total=len(inv.items), done=len(inv.items) - len(todo))
    try:
        if todo:
            items = ray.data.from_items(todo, override_num_blocks=max(1, -(-len(todo) // batch_size)))
            ds = items.map_batches(
                LabelActor,
                fn_constructor_kwargs={
                    "server": server,
                    "uri": uri if local is None else str(local),
                    "options": options,
                },
                batch_size=batch_size,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                memory=memory_bytes or None,
                # Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1: an
                # actor that dies comes back (its models load again) and its batch runs again.
            )
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for line in batch["record"]:
                    rec = json.loads(line)
                    if journal.pending(rec["sha"]):  # a batch run again may send a record twice
                        journal.append(rec)
                        prog.add(rec)
                        if progress is not None:
                            progress(prog)
    finally:
        journal.close()
    if progress is not None:
        progress(prog, final=True)
    root = local if local is not None else uri
    return finish(
        root, out, inv, journal, options, categories, info, prog, time.monotonic() - t0, images_root=local
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="seglabel-ray label", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "input", help="a folder, or a URI pyarrow reads (s3://bucket/prefix, gs://..., hdfs://...)"
    )
    ap.add_argument("--out", required=True, help="output folder (local)")
    ap.add_argument("--actors", type=int, default=1, help="actors, each with its own model set")
    ap.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor")
    ap.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor")
    ap.add_argument("--batch-size", type=int, default=4, help="images an actor runs at once")
    ap.add_argument("--memory-gb", type=float, default=0.0,
                    help="memory Ray reserves per actor when it places them (full-size models on the CPU: about 4)")  # fmt: skip
    ap.add_argument("--address", help="join this Ray cluster (e.g. auto) instead of starting one here")
    ap.add_argument("--format", default="coco", help="coco, yolo-seg or both (comma-separated)")
    ap.add_argument("--mask-format", choices=["rle", "polygon"], default="rle")
    ap.add_argument("--polygon-tolerance", type=float, default=1.0)
    ap.add_argument("--restart", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    flags.add_flags(ap, request_options.DATASET)
    ap.add_argument(
        "server_args", nargs="*", help="seglabel-server flags for the actors (after --), e.g. --models"
    )
    a = ap.parse_args(argv)

    sp = argparse.ArgumentParser(prog="seglabel-ray label -- (server flags)")
    add_flags(sp, exclude=frozenset({"port", "http_port"}))
    try:
        server = settings_from_args(sp.parse_args(a.server_args))
        apply_settings(ServerConfig(), server, "the server flags")
    except ConfigError as exc:
        ap.error(str(exc))
    opts = LabelOptions(
        flags.from_args(a, request_options.DATASET),
        formats=tuple(v.strip() for v in a.format.split(",") if v.strip()),
        mask_format=a.mask_format,
        polygon_tolerance=a.polygon_tolerance,
    )
    import ray

    if not ray.is_initialized():
        ray.init(address=a.address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        report = label(a.input, a.out, opts, server, a.actors, a.num_cpus, a.num_gpus, a.batch_size, a.restart,
                       None if a.quiet else progress_bar(), int(a.memory_gb * (1 << 30)))  # fmt: skip
    except (JobMismatch, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{report['labelled']} of {report['images']} images labelled on {a.actors} actor(s), "
          f"{len(report['failed'])} failed, {report['skipped_not_images']} skipped; "
          f"{report['images_per_s']:.2f} images/s over {report['seconds']:.0f} s")  # fmt: skip
    for kind, o in report["outputs"].items():
        print(f"  {kind}: {o.get('file') or o.get('folder')}")
    return 0
