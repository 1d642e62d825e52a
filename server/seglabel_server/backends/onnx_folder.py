"""ONNX graphs in a folder (``<model>/model.onnx``) run by ONNX Runtime on the CPU, by model name:
the smallest thing the kinds' ``execute`` can run on, for tools and benchmarks that export a few
graphs outside a model repository (``seglabel_export.video.export_video``). The server's own
backend (``onnxruntime.py``) runs a repository. No torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


class OnnxFolderBackend:
    def __init__(self, folder: str | Path, threads: int = 0):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.sessions = {
            p.parent.name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
            for p in sorted(Path(folder).glob("*/model.onnx"))
        }

    def run(self, model: str, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        sess = self.sessions[model]
        inputs = {i.name for i in sess.get_inputs()}
        outs = sess.run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in inputs})
        return {o.name: v for o, v in zip(sess.get_outputs(), outs)}

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)
