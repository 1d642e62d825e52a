"""PyTorch side of the models: the trace-only modules every graph is exported from
(:mod:`.modules`), the checkpoint loaders (:mod:`.checkpoints`) and the per-model builders the
PyTorch backend calls (:mod:`.build`). Imports torch, sam2 and open_clip: only export and the torch
backend import this package, never the ONNX Runtime / TensorRT serving path."""
