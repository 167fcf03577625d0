"""Option names shared across layers and by the CLI: one home for each list, free of heavy
imports (no torch, no MONAI), so that the bundle checks, inference and the CLI all read the same
tuples and a bad call can be answered before torch is imported.
"""

__all__ = [
    "SALIENCY_METHODS",
    "EXPLAIN_CHOICES",
    "METHOD_CHOICES",
    "SALIENCY_TARGETS",
    "EVALUATION_METHODS",
    "FORMAT_CHOICES",
    "BATCH_DEFAULT_FORMATS",
    "DEVICE_CHOICES",
    "TTA_CHOICES",
    "SEG_TYPES",
    "UNCERTAINTY_CHOICES",
    "AUGMENTATIONS",
    "POSTPROCESSING_KEYS",
    "METRIC_NAMES",
]

#: Saliency methods by the name ``--explain``/``--method`` and :func:`medxai.explain.explain`
#: accept: the keys of :data:`medxai.explain.methods.METHODS`, in its order (a test checks).
SALIENCY_METHODS = ("gradcam", "gradcampp", "hirescam", "layercam", "smoothgrad", "occlusion", "ig")
#: ``--explain``: ``auto`` (the model's measured default: its bundle's ``saliency`` section,
#: :class:`medxai.models.contract.SaliencySpec`), a saliency method, or ``none`` (no saliency).
EXPLAIN_CHOICES = ("auto", *SALIENCY_METHODS, "none")
#: ``medxai explain --method``: ``auto`` (the model's default) or a saliency method.
METHOD_CHOICES = ("auto", *SALIENCY_METHODS)
#: ``--target``: the named regions a saliency map may explain (``roi`` is a user region given
#: with ``--roi-box``/``--roi-mask``; :data:`medxai.explain.REGIONS` are these).
SALIENCY_TARGETS = ("segment", "border", "missed", "image")
#: The methods ``medxai explain --evaluate`` compares unless ``--methods`` names others.
EVALUATION_METHODS = ("gradcam", "gradcampp", "occlusion", "ig")
#: Output formats ``--format`` accepts.
FORMAT_CHOICES = (
    "nifti",
    "dicom-seg",
    "dicom-pm",
    "dicom-sr",
    "dicom-rtstruct",
    "dicom-sc",
    "png",
    "json",
)
#: What ``medxai batch`` writes when ``--format`` is not given: the objects a PACS takes back
#: and its viewers show (SEG, the saliency and uncertainty Parametric Maps, the TID 1500 SR
#: that ties them together) and report.json for scripts. NIfTI copies, the PNG preview, the
#: Secondary Capture overlay and the RT Structure Set are on request (docs/outputs.md says why).
BATCH_DEFAULT_FORMATS = ("dicom-seg", "dicom-pm", "dicom-sr", "json")
#: ``--seg-type``: how the DICOM SEG stores the segments (SegmentationType BINARY, LABELMAP,
#: FRACTIONAL; see :func:`medxai.io.writers.write_dicom_seg`).
SEG_TYPES = ("binary", "labelmap", "fractional")
#: ``--device``: ``cuda:N`` stands for any CUDA device index.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")

#: Test-time augmentation of whole-image models (bundle ``inference.tta``, ``--tta``).
TTA_CHOICES = ("none", "flips", "dihedral")
#: ``--uncertainty``: from the test-time augmentation views, from Monte-Carlo dropout passes, or
#: none (:mod:`medxai.uncertainty`). Unset: ``tta`` when the model runs with TTA, else ``none``.
UNCERTAINTY_CHOICES = ("tta", "mc-dropout", "none")
#: 2D training augmentation families (``--augment``): ``photo`` for pictures with no up,
#: ``radiograph`` for upright projection X-rays (see :mod:`medxai.training.trainer`).
AUGMENTATIONS = ("photo", "radiograph", "volume")
#: Steps a bundle's ``postprocessing`` section may name.
POSTPROCESSING_KEYS = ("keep_largest_component", "keep_components", "fill_holes")
#: Per-image segmentation metrics, in the order tables and CSV files show them
#: (:mod:`medxai.evaluation.metrics`).
METRIC_NAMES = ("dice", "iou", "pixel_accuracy", "sensitivity", "specificity", "hd95", "isic_score")
