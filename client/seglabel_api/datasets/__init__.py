"""Datasets as files: the inventory of a folder (images by their bytes, duplicates once), the
journal of a labelling job, one answer as COCO / YOLO-seg annotations, and the writers. Shared by
the command line (``seglabel_client.dataset``), the HTTP gateway's dataset jobs and Ray Data; needs
pycocotools, and OpenCV for polygons and YOLO-seg."""
