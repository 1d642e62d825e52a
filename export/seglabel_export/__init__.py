"""Offline export: SAM2.1 / CLIP checkpoints -> ONNX model repository (+ TensorRT engines).

Needs the ``export`` extra (torch, sam2, open_clip). Never imported at serve time. The modules every
graph is traced from, and the checkpoint loaders, live in ``seglabel_server.models.torch_modules`` so that
the PyTorch reference backend computes exactly what the exported graphs compute; this package adds
the source handling (official / random / tiny), the ONNX export, parity proofs and TensorRT builds.
"""
