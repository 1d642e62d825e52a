"""Offline export: SAM2.1 / CLIP checkpoints -> ONNX model repository (+ TensorRT engines).

Needs the ``export`` extra (torch, sam2, open_clip). Never imported by the ONNX Runtime or
TensorRT serving path; the PyTorch reference backend reuses :mod:`sources` and :mod:`wrappers`
so that it computes exactly what the exported graphs compute.
"""
