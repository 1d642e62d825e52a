"""The request path shared by the runtimes that run serialised graphs (ONNX Runtime, TensorRT):
inputs checked and cast by name against the manifest, outputs returned by name. A runtime adds
only how it opens a file and executes it."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from seglabel_server.backends.base import Backend
from seglabel_server.errors import ModelError
from seglabel_server.models.repository import ModelRepository


@dataclass
class Graph:
    handle: Any  # the runtime's session / engine
    inputs: dict[str, np.dtype]  # name -> dtype, from the manifest
    outputs: list[str]


class GraphBackend(Backend):
    file_kind = "onnx"  # which file of a manifest entry this runtime reads

    def __init__(self, repo: ModelRepository):
        self.repo = repo
        self.graphs: dict[str, Graph] = {}

    @abstractmethod
    def _open(self, model: str, path) -> Any:
        """Load one file; raises ModelError with the reason."""

    @abstractmethod
    def _execute(self, graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run with contiguous, correctly typed inputs; outputs by name."""

    def load(self, model: str) -> None:
        entry = self.repo.model_entry(model)
        handle = self._open(model, self.repo.model_path(model, self.file_kind))
        inputs = {i["name"]: np.dtype(i["dtype"]) for i in entry["inputs"]}
        self.graphs[model] = Graph(handle, inputs, [o["name"] for o in entry["outputs"]])

    def unload(self, model: str) -> None:
        self.graphs.pop(model, None)

    def loaded(self) -> list[str]:
        return list(self.graphs)

    def run(self, model: str, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        graph = self.graphs.get(model)
        if graph is None:
            raise ModelError(f"{model} is not loaded")
        missing = [n for n in graph.inputs if n not in feeds]
        if missing:
            raise ModelError(f"{model}: missing inputs {', '.join(missing)}")
        arrays = {}
        for n, dt in graph.inputs.items():
            x = feeds[n]
            if self._passes(x):  # already in the runtime's memory (an earlier output)
                if x.dtype != dt:
                    raise ModelError(f"{model}: input {n} is {x.dtype} in device memory, {dt} expected")
                arrays[n] = x
            else:
                arrays[n] = np.ascontiguousarray(x, dtype=dt)
        return self._execute(graph, arrays)

    def _passes(self, x) -> bool:
        """Whether ``x`` is this runtime's own device array, fed as it is."""
        return False
