"""Names shared by the pipeline and the CLI, kept free of heavy imports."""

#: Output formats ``--format`` accepts.
FORMAT_CHOICES = ("nifti", "dicom-seg", "dicom-sc", "png", "json")
#: Saliency methods ``--explain`` accepts (``none`` turns saliency off).
EXPLAIN_CHOICES = ("gradcam", "gradcampp", "occlusion", "ig", "none")
