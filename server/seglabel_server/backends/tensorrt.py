"""TensorRT backend: native engines built by ``seglabel-export trt`` (one optimization profile per
engine covering the dynamic axes). Needs the ``tensorrt`` and ``cuda-python`` packages and a CUDA GPU;
never imports torch. Inputs and outputs cross host memory as numpy arrays; device buffers are reused
across calls and grow when a larger batch arrives."""

from __future__ import annotations

import numpy as np

from seglabel_server.backends.base import BackendInfo
from seglabel_server.backends.config import BackendConfig
from seglabel_server.backends.graph import Graph, GraphBackend
from seglabel_server.errors import ModelError
from seglabel_server.models.repository import ModelRepository


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.8
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise ModelError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def _output_allocator(trt, engine):
    """TensorRT's callback for outputs of data-dependent shape: memory from the engine's growing
    buffers, the shape recorded for the copy back."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self):
            trt.IOutputAllocator.__init__(self)
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name, memory, size, alignment):
            return engine._buffer(tensor_name, int(size))

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            return engine._buffer(tensor_name, int(size))

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(shape)

    return OutputAllocator()


class _Engine:
    def __init__(self, trt, runtime, path, cudart, stream):
        self.trt, self.cudart, self.stream = trt, cudart, stream
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelError(
                f"{path}: cannot deserialize the engine (built for another TensorRT version or GPU?)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity bytes)
        self.allocator = _output_allocator(trt, self)  # outputs whose shape depends on the data

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self.buffers.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr, cap = _check(self.cudart.cudaMalloc(max(nbytes, 1))), max(nbytes, 1)
            self.buffers[name] = (ptr, cap)
        return ptr

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.inputs:
            arr = np.ascontiguousarray(feeds[name])
            self.context.set_input_shape(name, arr.shape)
            ptr = self._buffer(name, arr.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
            self.context.set_tensor_address(name, ptr)
        shapes = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):  # e.g. the decoder's kept prompts: known after the run
                self.context.set_output_allocator(name, self.allocator)
            else:
                nbytes = int(np.prod(shape)) * self._dtype(name).itemsize
                self.context.set_tensor_address(name, self._buffer(name, nbytes))
                shapes[name] = shape
        self.allocator.shapes.clear()
        if not self.context.execute_async_v3(self.stream):
            raise ModelError("TensorRT execution failed")
        _check(cudart.cudaStreamSynchronize(self.stream))
        shapes.update(self.allocator.shapes)
        outs = [np.empty(shapes[name], self._dtype(name)) for name in self.outputs]
        for name, out in zip(self.outputs, outs):
            _check(
                cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[name][0], out.nbytes, d2h, self.stream)
            )
        _check(cudart.cudaStreamSynchronize(self.stream))
        return dict(zip(self.outputs, outs))

    def _dtype(self, name: str) -> np.dtype:
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers.clear()


class TensorRTBackend(GraphBackend):
    file_kind = "tensorrt"

    def __init__(self, repo: ModelRepository, cfg: BackendConfig):
        super().__init__(repo)
        device = cfg.device if cfg.device != "cpu" else "cuda"
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise ModelError("tensorrt backend: the tensorrt package is not installed") from exc
        try:
            cudart = _cudart()
        except ImportError as exc:
            raise ModelError(
                "tensorrt backend: cuda-python is not installed (pip install cuda-python)"
            ) from exc
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if _check(cudart.cudaGetDeviceCount()) <= index:
            raise ModelError(f"tensorrt backend: no CUDA device {index}")
        _check(cudart.cudaSetDevice(index))
        self.trt = trt
        self.cudart = cudart
        self.stream = _check(cudart.cudaStreamCreate())
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        gpu = _check(cudart.cudaGetDeviceProperties(index)).name
        gpu = gpu.decode(errors="replace").strip("\x00") if isinstance(gpu, bytes) else str(gpu)
        first = next(iter(repo.manifest["models"].values()), {})
        precision = (first.get("tensorrt") or {}).get("precision", "fp32")
        self.info = BackendInfo(
            "tensorrt", f"cuda:{index} ({gpu})", [f"TensorRT {trt.__version__}"], precision
        )

    def _open(self, model: str, path) -> _Engine:
        return _Engine(self.trt, self.runtime, path, self.cudart, self.stream)

    def _execute(self, graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return graph.handle(feeds)

    def close(self) -> None:
        for graph in self.graphs.values():
            graph.handle.close()
