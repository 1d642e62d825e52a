"""The one backend interface: load a model by its manifest name, run it on named arrays.

What a model means (how items batch, what its outputs are) lives in its kind
(:mod:`seglabel_server.models.kinds`); a backend only knows how to run graphs on one runtime. Outputs stay
in the runtime's own memory (a torch CUDA tensor stays on the GPU) until a kind or the pipeline asks
for host memory with :meth:`Backend.to_host`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from seglabel_server.amg import MaskData
from seglabel_server.types import MaskResult


@dataclass
class BackendInfo:
    name: str
    device: str
    providers: list[str] = field(default_factory=list)
    precision: str = "fp32"


class LogitOps(Protocol):
    """Low-res logits where a mask path keeps them (numpy arrays, or tensors in a backend's
    memory): what the grid's candidate filter (``pipeline.masks.CandidateSet``) does with them."""

    def take(self, out, rows: np.ndarray, cands: np.ndarray) -> Any:
        """Candidates (prompt row, candidate) of one decoder output: [K,L,L] logits."""

    def low_res_boxes(self, logits, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """([K,4] inclusive low-res boxes, [K] non-empty) as host arrays."""

    def rows(self, block, idx: np.ndarray) -> Any: ...

    def stack(self, rows: list) -> Any: ...


class DeviceMaskOps(LogitOps, Protocol):
    """The per-mask kernels a backend runs in its own memory (:meth:`Backend.device_ops`), each the
    twin of a host step and tested equal to it; ``pipeline.mask_path.DeviceMaskPath`` runs them."""

    def upload(self, image: np.ndarray) -> Any:
        """RGB uint8 [H,W,3] -> the image in the backend's memory (its one copy there)."""

    def sam_preprocess(self, image, size: int, mean, std) -> Any:
        """The uploaded image -> the encoder's input, as ``models.images.sam_preprocess``."""

    def prompted(self, p, outs: list, sam: dict) -> MaskData:
        """Point / box prompts' masks, as ``pipeline.masks.prompted``."""

    def finish(self, cand: MaskData, hw, threshold: float) -> tuple[list[MaskResult], Any]:
        """Survivors upsampled, empty ones dropped: (MaskResults without index, full masks there)."""

    def crops(self, image, full, boxes_xywh: list, size: int, mean, std, context: float,
              background_keep: float) -> Any:  # fmt: skip
        """CLIP inputs of the masks, as ``models.images.clip_crop``."""


class Backend(ABC):
    """Runs exported models. Implementations: onnxruntime (default), torch (reference), tensorrt."""

    info: BackendInfo
    # What this backend offers beyond load/run: "device_masks" (device_ops), "multi_image"
    # (decoder calls mixing images).
    capabilities: frozenset[str] = frozenset()

    @abstractmethod
    def load(self, model: str) -> None:
        """Load the repository's model ``model``; raises ModelError with the reason."""

    @abstractmethod
    def run(self, model: str, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run a loaded model on named inputs; returns its outputs by name."""

    @abstractmethod
    def unload(self, model: str) -> None:
        """Forget ``model`` (no-op when it is not loaded)."""

    @abstractmethod
    def loaded(self) -> list[str]:
        """Names of the models loaded so far."""

    def to_host(self, x: Any) -> np.ndarray:
        """An output of :meth:`run` as a numpy array in host memory."""
        return np.asarray(x)

    def upsample_masks(self, logits: np.ndarray, hw: tuple[int, int], threshold: float) -> np.ndarray | None:
        """Optional: [K,L,L] logits -> [K,H,W] bool (bilinear, align_corners=False, > threshold) on the
        backend's device. None: the pipeline upsamples on the CPU."""
        return None

    def warm_up(self) -> tuple[int, float]:
        """Prepare what a first request would otherwise pay for (compiled engines: every bucket).
        Returns (graphs run, seconds)."""
        return 0, 0.0

    def release_memory(self) -> None:
        """Give back memory the runtime keeps for its next runs (an allocator's arena), called when
        the server has been idle a while. Default: nothing to give back."""

    @property
    def keeps_arena(self) -> bool:
        """Whether the models' working memory stays allocated between runs (a host arena that
        :meth:`release_memory` gives back), rather than being freed at the end of each run."""
        return False

    def reserve(self, model: str) -> bool:
        """Run ``model`` once on zeros so that the arena holds one run's working memory before a
        request needs it (after :meth:`release_memory`). False where there is no arena to fill."""
        return False

    def device_ops(self) -> DeviceMaskOps | None:
        """Device twins of the pipeline's per-mask work (select, finish, crops), or None: the
        pipeline then does that work on the host."""
        return None

    def close(self) -> None:  # pragma: no cover - trivial
        pass
