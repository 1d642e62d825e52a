"""Whole datasets: ``label_folder`` (a folder of images in, COCO / YOLO-seg annotations out,
resumable) and ``evaluate`` (COCO AP / AR against ground truth). Needs the ``dataset`` extra
(pycocotools, OpenCV). The formats themselves are ``seglabel_api.datasets``."""

from seglabel_api.datasets.job import LabelOptions

from seglabel_client.dataset.evaluate import evaluate, format_eval
from seglabel_client.dataset.labeler import ServerGone, label_folder, label_folder_async

__all__ = ["LabelOptions", "ServerGone", "evaluate", "format_eval", "label_folder", "label_folder_async"]
