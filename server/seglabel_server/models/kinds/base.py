"""A model kind: everything the server needs to know to queue, batch, run and report one model.

The scheduler's stages, per-stage settings and ``--max-batch-<stage>`` flags, metrics labels, the
repository's checks, ``GetServerInfo``'s model list and what a backend loads all come from the
registered kinds (:mod:`seglabel_server.models.kinds`). A kind is data plus three small functions:
``collate`` (work items -> named feeds of one batch), the backend's ``run`` by model name, and
``split`` (named outputs -> exactly one result per item).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Feeds = dict[str, Any]


def concat(items: Sequence[Any]):
    """Arrays joined on the first axis: numpy on the host, or the backend's own tensors (the torch
    device path hands the kinds device tensors; torch is only imported when it is already in use)."""
    if all(isinstance(x, np.ndarray) for x in items):
        return np.concatenate(list(items))
    import torch

    return torch.cat([torch.as_tensor(x) for x in items])


def stack(items: Sequence[Any]):
    """Arrays stacked on a new first axis (numpy, or the backend's tensors as :func:`concat`)."""
    if all(isinstance(x, np.ndarray) for x in items):
        return np.stack(list(items))
    import torch

    return torch.stack([torch.as_tensor(x) for x in items])


def module_builder(spec):
    """A kind's ``torch_builder`` (a callable or ``"module:function"``) as a callable."""
    if callable(spec):
        return spec
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(eq=False)
class ModelKind:
    """One model the server can run, as a stage of the scheduler.

    ``name`` is the stage (queue, metrics label, ``--max-batch-<name>``); ``model`` the manifest's
    model name (its folder in the repository); ``family`` the manifest section holding its metadata
    (models of one family load, or are disabled, together). ``max_batch`` is in the kind's own
    units (``size``: images, prompts, crops, token rows); ``max_batch_gpu`` replaces it off the CPU.
    ``priority``: lower runs first when several stages are ready (finish requests already in flight
    first). ``torch_builder`` names the function (``"module:function"`` or a callable taking
    ``(manifest, device, shared)``) that builds the PyTorch module for the torch backend;
    ``torch_variants`` other builders of the same model, chosen by a backend capability.
    """

    name: str
    model: str
    family: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    max_batch: int = 8
    max_batch_gpu: int = 0
    max_queue_delay_ms: float = 0.0
    priority: int = 50
    required: bool = False
    clicks: bool = False  # a click (points or a box on a cached image) runs it: the interactive lane's
    torch_builder: str | Callable | None = None
    # Other torch modules of the same model, by backend capability (e.g. "multi_image": a decoder
    # taking prompts of several images); a torch backend with that capability builds that one.
    torch_variants: dict[str, str | Callable] = field(default_factory=dict)
    description: str = ""

    # -- batching ---------------------------------------------------------------------------------
    def size(self, payload: Any) -> int:
        """Batch units of one work item (default: its first axis)."""
        return len(payload)

    def key(self, payload: Any) -> Hashable:
        """Items with different keys never share a batch."""
        return None

    def collate(self, payloads: Sequence[Any]) -> Feeds:
        """Work items -> the named inputs of one call (default: concatenated on the first axis)."""
        return {self.inputs[0]: concat(payloads)}

    def split(self, outputs: Feeds, payloads: Sequence[Any], to_host: Callable[[Any], np.ndarray]) -> list:
        """Named outputs of one call -> one result per item (default: the first output, host memory,
        cut back into each item's rows)."""
        return self.rows(outputs[self.outputs[0]], payloads, to_host)

    def rows(self, output, payloads: Sequence[Any], to_host: Callable[[Any], np.ndarray]) -> list:
        """One output in host memory, cut back into each item's rows (``size`` of them each)."""
        bounds = np.cumsum([self.size(p) for p in payloads])[:-1]
        return np.split(to_host(output), bounds)

    # -- running ----------------------------------------------------------------------------------
    def execute(self, backend, payloads: Sequence[Any]) -> list:
        """One batch on ``backend``: exactly one result per item, or an error."""
        outputs = backend.run(self.model, self.collate(payloads))
        missing = [n for n in self.outputs if n not in outputs]
        if missing:
            raise RuntimeError(f"{self.name}: {self.model} returned no {', '.join(missing)}")
        results = self.split(outputs, payloads, backend.to_host)
        if len(results) != len(payloads):
            raise RuntimeError(f"{self.name}: {len(results)} results for {len(payloads)} items")
        return results

    def default_max_batch(self, device: str) -> int:
        return self.max_batch_gpu if self.max_batch_gpu and device != "cpu" else self.max_batch
