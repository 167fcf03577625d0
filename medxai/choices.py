"""Option names shared across layers and by the CLI: one home for each list, free of heavy
imports (no torch, no MONAI), so that the bundle checks, inference and the CLI all read the same
tuples and a bad call can be answered before torch is imported.
"""

__all__ = ["TTA_CHOICES", "POSTPROCESSING_KEYS", "METRIC_NAMES"]

#: Test-time augmentation of whole-image models (bundle ``inference.tta``, ``--tta``).
TTA_CHOICES = ("none", "flips", "dihedral")
#: Steps a bundle's ``postprocessing`` section may name.
POSTPROCESSING_KEYS = ("keep_largest_component", "keep_components", "fill_holes")
#: Per-image segmentation metrics, in the order tables and CSV files show them
#: (:mod:`medxai.evaluation.metrics`).
METRIC_NAMES = ("dice", "iou", "pixel_accuracy", "sensitivity", "specificity", "hd95",
                "isic_score")
