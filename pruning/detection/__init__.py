"""Detection: datasets in ultralytics' YOLO format (:mod:`.data`) and YOLOv8 prune/finetune/validate (:mod:`.yolo`)."""
from .data import DETECTION_DATASETS, DetectionData, is_detection_dataset, load_detection_data, make_shapes

__all__ = ["DETECTION_DATASETS", "DetectionData", "is_detection_dataset", "load_detection_data", "make_shapes"]
