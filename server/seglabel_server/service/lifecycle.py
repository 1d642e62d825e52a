"""The service's life: its models loaded (in a thread: the loop keeps answering health checks) and
warmed up, then ready; memory given back to the OS while it is idle; drained and closed. Every
"not ready" or "not served here" refusal comes from here."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from seglabel_server import memory
from seglabel_server.errors import CapabilityUnavailable, Unavailable
from seglabel_server.metrics import Metrics
from seglabel_server.models import kinds
from seglabel_server.scheduler.batching import INTERACTIVE
from seglabel_server.service import loading
from seglabel_server.service.admission import Admission
from seglabel_server.service.budget import RuntimeMemory, runtime_bytes
from seglabel_server.service.capabilities import Capabilities
from seglabel_server.service.config import ServerConfig
from seglabel_server.service.image_source import ImageSource
from seglabel_server.storage.answers import AnswerCache
from seglabel_server.types import RequestContext, SegmentOptions

log = logging.getLogger(__name__)

# Growth of the process since memory was last given back past which an idle server gives the
# runtime's arena back even when it holds one image's working memory (see release_memory).
REGROW_BYTES = 256 << 20


class Lifecycle:
    """``loaded``: what loading produced (None until then); ``ready`` is set once it is warm."""

    def __init__(self, cfg: ServerConfig, metrics: Metrics, admission: Admission, images: ImageSource):
        self.cfg, self.metrics, self.admission, self.images = cfg, metrics, admission, images
        self.loaded: loading.Loaded | None = None
        self.answers: AnswerCache | None = None  # labelled answers kept for Relabel (when served)
        self.ready = asyncio.Event()
        self.load_error = ""
        self.draining = False
        self.background: set[asyncio.Task] = set()
        self.rest_rss = 0  # RSS when memory was last given back (release_memory)
        self.idle_epoch = 0  # one more each time the server goes idle: a later release checks it
        admission.on_idle = self.release_when_idle

    @property
    def capabilities(self) -> Capabilities:
        return self.loaded.capabilities if self.loaded else Capabilities()

    @property
    def serving(self) -> bool:
        return self.ready.is_set() and not self.draining

    def require_open(self) -> None:
        """Unavailable while draining (uploads are taken while the models load)."""
        if self.draining:
            raise Unavailable("server is shutting down; retry on another replica or later")

    def require_ready(self) -> None:
        """Unavailable while the models load (with a pushback), after they failed, or draining."""
        self.require_open()
        if not self.ready.is_set():
            raise Unavailable(
                f"models are not loaded{': ' + self.load_error if self.load_error else ' yet'}",
                retry_after_ms=None if self.load_error else 1000,
            )

    def require(self, family: str, what: str) -> None:
        """CapabilityUnavailable, saying why, when ``family`` is not served here."""
        if not self.capabilities.serves(family):
            raise CapabilityUnavailable(
                f"{what} is not available on this server: {self.capabilities.why_not(family)}"
            )

    async def load(self, answers_shared: str = "") -> None:
        """Load the models, keep answers when labels are served (in ``answers_shared``, a Redis
        store, too), warm up; then ready. ``load_error`` says why when it fails."""
        t0 = time.perf_counter()
        try:
            self.loaded = loaded = await asyncio.to_thread(loading.load, self.cfg, self.metrics)
            self.images.cache = cache = loaded.embeddings
            if self.cfg.answer_cache_mb > 0 and self.capabilities.serves("labels"):
                self.answers = AnswerCache(
                    self.cfg.answer_cache_mb << 20, answers_shared, self.cfg.answer_ttl_s
                )
                loaded.pipeline.parts.answers = self.answers
            self.metrics.embedding_bytes.set_function(lambda: cache.bytes if cache is not None else 0)
            graphs, seconds = await asyncio.to_thread(loaded.backend.warm_up)
            if graphs:
                what = "AOTInductor packages" if self.cfg.torch_compile == "aot" else "compiled engines"
                log.info("%s: %d warm-up runs (every bucket) in %.1fs", what, graphs, seconds)
            if loaded.backend.info.device == "cpu":
                encoder_batch = loaded.pipeline.scheduler.max_batch("encoder")
                share = runtime_bytes(loaded.repo.sam2)
                self.admission.runtime = RuntimeMemory(
                    self.admission.budget, share, encoder_batch, loaded.backend.keeps_arena
                )
            if self.cfg.warmup:
                await self._warm_up()
                if self.admission.runtime is not None:
                    self.admission.runtime.filled(1)  # the warm-up's encoder run grew the arena to one image
            self.rest_rss = memory.rss_bytes()
        except Exception as exc:
            self.load_error = str(exc)
            log.error("model loading failed: %s", exc)
            raise
        self.ready.set()
        if self.admission.inflight == 0:
            self.release_when_idle()  # what warm-up took, back unless requests keep it in use
        info = loaded.backend.info
        log.info(
            "models loaded and warmed up in %.1fs (%s on %s, providers %s)%s",
            time.perf_counter() - t0,
            info.name,
            info.device,
            info.providers,
            " -- RANDOM WEIGHTS: masks and labels are meaningless" if loaded.repo.random_weights else "",
        )

    async def _warm_up(self) -> None:
        """One small request through every model, and the default vocabulary's text embeddings."""
        image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
        ctx = RequestContext(request_id="warmup")
        click = SegmentOptions(prompt_type="points", points=((32.0, 32.0, 1),))
        await self.loaded.run(click, image, ctx)
        await self.loaded.pipeline.warm_up(tuple(self.cfg.pipeline.vocabulary), image, ctx)
        sched = self.loaded.pipeline.scheduler
        if (
            sched.lane_executor is not sched.executor
        ):  # the interactive lane's own sessions (a first run is slower)
            await self.loaded.run(
                click, image, RequestContext(request_id="warmup-click", priority=INTERACTIVE)
            )

    def drain(self) -> None:
        """Refuse new requests (UNAVAILABLE); those in flight go on."""
        self.draining = True

    async def close(self) -> None:
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        if self.loaded:
            await asyncio.to_thread(self.loaded.close)
            self.loaded.backend.close()
        if self.answers is not None:
            self.answers.close()

    # -- memory given back while idle ------------------------------------------------------------
    def release_when_idle(self) -> None:
        """Memory back to the OS once the server stays idle ``idle_release_s``: the runtime's arena
        and the C heap keep a burst's peak for the next requests otherwise. Back-to-back requests
        never wait for it (giving back and taking again costs page faults on every request)."""
        self.idle_epoch += 1
        epoch = self.idle_epoch

        async def later() -> None:
            await asyncio.sleep(self.cfg.idle_release_s)
            if self.admission.inflight == 0 and self.idle_epoch == epoch and self.loaded is not None:
                await asyncio.to_thread(self.release_memory)

        task = asyncio.get_running_loop().create_task(later())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def release_memory(self) -> None:
        """With ``keep_working_set`` (the default) the runtime's arena is given back only when it
        holds more than one image's working memory (a burst ran several encoder images at once) or
        the process grew by over ``REGROW_BYTES`` since the last time (another model's larger
        run), and then one encoder run on zeros fills it again: requests start warm. Without it
        everything is given back. The C heap's free pages are returned either way."""
        backend, runtime = self.loaded.backend, self.admission.runtime
        keep = self.cfg.keep_working_set and runtime is not None and runtime.kept
        grown = runtime is not None and (
            runtime.held_shares > 1 or memory.rss_bytes() > self.rest_rss + REGROW_BYTES
        )
        if not keep or grown:
            backend.release_memory()
            if runtime is not None:
                runtime.released()
            memory.trim()
            if keep and self.admission.inflight == 0 and backend.reserve(kinds.get("encoder").model):
                runtime.filled(1)
        memory.trim()
        self.rest_rss = memory.rss_bytes()
