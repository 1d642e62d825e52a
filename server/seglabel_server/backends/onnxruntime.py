"""ONNX Runtime backend: the embedded default (CPU), CUDA / TensorRT execution providers with
onnxruntime-gpu. Reports the providers each session actually got: a silent CPU fallback is an error
unless the CPU was asked for.

With IO binding (on by default off the CPU; ``--ort-io-binding``) every output is left where the
provider put it (an :class:`OrtDeviceArray` over an OrtValue in GPU memory) and fed to the next
graph by pointer: the encoder's features go from the encoder to the decoder without a host round
trip; a slice (one image of an encoder batch, a request's prompts) is a view, not a copy. Host
memory is reached only through ``to_host`` (``np.asarray``). CUDA graph capture is not used: the
decoder's outputs have data-dependent shapes (the kept prompts), which ONNX Runtime's CUDA graphs
cannot hold."""

from __future__ import annotations

import copy
import logging

import numpy as np
import onnxruntime as ort

from seglabel_server.backends.base import BackendInfo
from seglabel_server.backends.config import BackendConfig
from seglabel_server.backends.graph import Graph, GraphBackend
from seglabel_server.errors import ModelError
from seglabel_server.models.repository import ModelRepository
from seglabel_server.niceness import in_lowered_thread

log = logging.getLogger(__name__)

_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OrtDeviceArray:
    """An output of an IO-bound run, left in the provider's memory: the OrtValue, and a view of it
    (element offset + shape) so slicing on the first axis copies nothing."""

    def __init__(self, value: ort.OrtValue, offset: int = 0, shape: tuple[int, ...] | None = None):
        self.value = value
        self.offset = offset
        self.shape = tuple(value.shape()) if shape is None else shape
        self.dtype = np.dtype(_NUMPY[value.data_type()])
        self.device = value.device_name().lower()

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def data_ptr(self) -> int:
        return self.value.data_ptr() + self.offset * self.dtype.itemsize

    def __getitem__(self, key):
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self.shape[0])
            stop = max(start, stop)
            row = int(np.prod(self.shape[1:], dtype=np.int64))
            return OrtDeviceArray(self.value, self.offset + start * row, (stop - start, *self.shape[1:]))
        return np.asarray(self)[key]  # anything else (a gather of survivors): on the host

    def __array__(self, dtype=None, copy=None):
        whole = self.value.numpy().reshape(-1)
        out = whole[self.offset : self.offset + self.size].reshape(self.shape)
        return out if dtype is None else out.astype(dtype)


PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeBackend(GraphBackend):
    def __init__(self, repo: ModelRepository, cfg: BackendConfig):
        super().__init__(repo)
        device, threads, io_binding = cfg.device, cfg.threads, cfg.io_binding
        arena_shrinkage, cpu_arena = cfg.arena_shrinkage, cfg.cpu_arena
        if device not in PROVIDERS:
            raise ModelError(f"onnxruntime: unknown device {device!r} (cpu, cuda, tensorrt)")
        self.wanted = PROVIDERS[device]
        if device != "cpu" and hasattr(ort, "preload_dlls"):
            # The serving path never imports torch, which would otherwise have loaded the CUDA and
            # cuDNN libraries from NVIDIA's pip packages; without them the CUDA provider cannot load.
            try:
                ort.preload_dlls()
            except Exception as exc:  # reported by the provider check below if it matters
                log.warning("onnxruntime.preload_dlls failed: %s", exc)
        available = ort.get_available_providers()
        if self.wanted[0] not in available:
            raise ModelError(
                f"onnxruntime: {self.wanted[0]} is not available (installed providers: {available}); "
                "install onnxruntime-gpu or use --device cpu"
            )
        self.opts = ort.SessionOptions()
        self.opts.log_severity_level = 3
        self.opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            self.opts.intra_op_num_threads = threads
        # The CPU arena is ~1.5x faster than plain malloc here (grid 16: 10.3 s vs 15.5 s) but keeps its
        # peak after a burst (in one process: 4.5 GB after two bursts of 6 requests with per-run
        # shrinkage; 0.87 GB without the arena).
        self.opts.enable_cpu_mem_arena = cpu_arena
        # One arena for every session on the CPU instead of one each: a single worker runs them one
        # after the other, so the arena holds the largest run's memory rather than the sum of every
        # model's largest (full-size models: 3.9 GB after an encoder, two decoder x64 and a CLIP x32
        # run with one arena each, 3.3 GB shared; given back, 0.6 GB shared, 2.0 GB separate, where
        # only the decoder's arena could be shrunk).
        # Without ONNX Runtime's memory pattern (one block planned for a whole run, allocated beside
        # the blocks of the run that planned it) an arena stays at one run's size: full-size
        # encoder 725 MB after 3 runs instead of 1372 MB, decoder x32 1056 MB instead of 1614 MB,
        # at the same speed (2.06 vs 2.11 s, 0.63 vs 0.69 s; 2 cores).
        if device == "cpu":
            self.opts.enable_mem_pattern = False
        self.shared_arena = device == "cpu" and cpu_arena and _shared_cpu_arena()
        if self.shared_arena:
            self.opts.add_session_config_entry("session.use_env_allocators", "1")
        self.shrink_options = ort.RunOptions()
        self.shrink_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        # Each session has its own intra-op thread pool, whose threads spin for a while after a run;
        # the next stage's session (one worker runs the stages one after the other) then shares the
        # cores with them. Stopping the spin when a run returns (it still spins inside a run):
        # alternating decoder / CLIP / encoder runs on 2 cores, decoder 35-69 -> 22-26 ms, CLIP
        # 89-122 -> 56-68 ms, encoder 2146-2563 -> 1971-2313 ms, decoder x32 1475-1822 -> 1183-1650 ms.
        self.opts.add_session_config_entry("session.force_spinning_stop", "1")
        self.run_options = ort.RunOptions()
        if arena_shrinkage:
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.io_binding = device != "cpu" if io_binding is None else io_binding
        self.nice = cfg.batch_nice if device == "cpu" else 0
        self.bind_device = "cpu" if device == "cpu" else "cuda"
        self.info = BackendInfo(name="onnxruntime", device=device, providers=[], precision="fp32")

    def _open(self, model: str, path) -> ort.InferenceSession:
        try:
            sess = in_lowered_thread(
                lambda: ort.InferenceSession(str(path), self.opts, providers=self.wanted), self.nice
            )
        except Exception as exc:
            raise ModelError(f"onnxruntime: cannot load {model}: {exc}") from exc
        got = sess.get_providers()[0]
        if got != self.wanted[0]:
            raise ModelError(
                f"onnxruntime: {model} fell back to {got} although {self.wanted[0]} was asked for"
            )
        if got not in self.info.providers:
            self.info.providers.append(got)
        return sess

    def _execute(self, graph: Graph, feeds: dict) -> dict:
        if not self.io_binding:
            return dict(zip(graph.outputs, graph.handle.run(graph.outputs, feeds, self.run_options)))
        binding = graph.handle.io_binding()
        for name, x in feeds.items():
            if isinstance(x, OrtDeviceArray):
                dev = "cpu" if x.device == "cpu" else "cuda"
                binding.bind_input(name, dev, 0, x.dtype.type, list(x.shape), x.data_ptr())
            else:
                binding.bind_cpu_input(name, x)
        for name in graph.outputs:
            binding.bind_output(name, self.bind_device, 0)
        graph.handle.run_with_iobinding(binding, self.run_options)
        return {name: OrtDeviceArray(v) for name, v in zip(graph.outputs, binding.get_outputs())}

    def interactive_twin(self, models: list[str]) -> OnnxRuntimeBackend | None:
        """For the scheduler's interactive lane, where batch work runs at a lower priority: a twin of
        this backend with sessions of its own for ``models`` (those a click runs), opened at the
        server's priority, the others' shared (a click on a new image runs the batch encoder's).
        Same options and arena. None where batch work keeps the server's priority."""
        if not self.nice:
            return None
        twin = copy.copy(self)
        twin.nice, twin.graphs = 0, dict(self.graphs)
        for m in models:
            if m in self.graphs:
                twin.load(m)
        return twin

    def release_memory(self) -> None:
        """Shrink the shared CPU arena to what is in use: ONNX Runtime frees unused arena chunks at
        the end of a run that asks for it, so the cheapest loaded graph runs once on zeros."""
        if not self.shared_arena or not self.graphs:
            return
        name, graph = min(self.graphs.items(), key=lambda kv: _feeds_size(self.repo, kv[0]))
        feeds = _zeros(self.repo.manifest["models"][name]["inputs"])
        try:
            graph.handle.run(graph.outputs[:1], feeds, self.shrink_options)
        except Exception as exc:  # never fatal: memory just stays where it is
            log.warning("arena shrink through %s failed: %s", name, exc)

    @property
    def keeps_arena(self) -> bool:
        return self.shared_arena

    def reserve(self, model: str) -> bool:
        graph = self.graphs.get(model)
        if not self.shared_arena or graph is None:
            return False
        try:
            graph.handle.run(
                graph.outputs, _zeros(self.repo.manifest["models"][model]["inputs"]), self.run_options
            )
        except Exception as exc:  # never fatal: the next request grows the arena instead
            log.warning("arena reserve through %s failed: %s", model, exc)
            return False
        return True

    def _passes(self, x) -> bool:
        return isinstance(x, OrtDeviceArray)

    def to_host(self, x) -> np.ndarray:
        return np.asarray(x)


_SHARED_ARENA: list[bool] = []  # registered once per process (the environment is process-wide)


def _shared_cpu_arena() -> bool:
    """Register one arena allocator for the CPU in ONNX Runtime's environment (sessions opt in
    with ``session.use_env_allocators``); False where this onnxruntime cannot."""
    if not _SHARED_ARENA:
        try:
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({}))
            _SHARED_ARENA.append(True)
        except Exception as exc:
            log.warning("onnxruntime: no shared CPU arena (%s); each session keeps its own", exc)
            _SHARED_ARENA.append(False)
    return _SHARED_ARENA[0]


def _dims(spec: dict) -> list[int]:
    return [d if isinstance(d, int) else 1 for d in spec["shape"]]


def _feeds_size(repo, model: str) -> int:
    return sum(int(np.prod(_dims(i))) for i in repo.manifest["models"][model]["inputs"])


def _zeros(inputs: list[dict]) -> dict[str, np.ndarray]:
    return {i["name"]: np.zeros(_dims(i), np.dtype(i["dtype"])) for i in inputs}
