"""Writers of medxai's outputs: NIfTI, DICOM SEG / Parametric Map / SR / RTSTRUCT / Secondary
Capture, PNG preview, JSON report.

All writers take arrays in MONAI order (``(C, I, J[, K])`` images, ``(I, J[, K])`` label and
saliency maps; ``I`` along image columns, ``J`` along rows, ``K`` along slices/frames), write
atomically (temporary file in the same folder, then ``os.replace``) and return what they wrote.
DICOM objects reference their source, get new UIDs, and name medxai and the model that made them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medxai.io.writers._common import (
        derived_uids,
        save_dicom,
        series_number_for,
        shared_source_headers,
    )
    from medxai.io.writers._warm import warm_up as warm_dicom_writers
    from medxai.io.writers.dicom_pm import DEFAULT_PM_SERIES_OFFSET, quantity_code, write_dicom_pm
    from medxai.io.writers.dicom_rtstruct import write_dicom_rtstruct
    from medxai.io.writers.dicom_sc import (
        PLACEHOLDER_PATIENT_ID,
        PLACEHOLDER_PATIENT_NAME,
        create_photo_study,
        write_dicom_sc,
    )
    from medxai.io.writers.dicom_seg import dicom_seg_dataset, segment_codes, write_dicom_seg
    from medxai.io.writers.dicom_sr import segment_measurements, write_dicom_sr
    from medxai.io.writers.nifti import (
        sidecar_path,
        write_nifti_labels,
        write_nifti_map,
        write_nifti_mask,
    )
    from medxai.io.writers.png import overlay_rgb, window_to_uint8, write_preview_png
    from medxai.io.writers.preview import PreviewInfo, write_clinical_preview
    from medxai.io.writers.report import label_statistics, to_plain, write_report_json


# each name's module, imported on first use (PEP 562): a photo's NIfTI/PNG outputs never import
# highdicom, which the DICOM writers need (benchmarks/bench_startup.py)
_HOMES = {
    "series_number_for": "medxai.io.writers._common",
    "derived_uids": "medxai.io.writers._common",
    "shared_source_headers": "medxai.io.writers._common",
    "save_dicom": "medxai.io.writers._common",
    "DEFAULT_PM_SERIES_OFFSET": "medxai.io.writers.dicom_pm",
    "quantity_code": "medxai.io.writers.dicom_pm",
    "write_dicom_pm": "medxai.io.writers.dicom_pm",
    "write_dicom_rtstruct": "medxai.io.writers.dicom_rtstruct",
    "PLACEHOLDER_PATIENT_ID": "medxai.io.writers.dicom_sc",
    "PLACEHOLDER_PATIENT_NAME": "medxai.io.writers.dicom_sc",
    "create_photo_study": "medxai.io.writers.dicom_sc",
    "write_dicom_sc": "medxai.io.writers.dicom_sc",
    "segment_codes": "medxai.io.writers.dicom_seg",
    "write_dicom_seg": "medxai.io.writers.dicom_seg",
    "dicom_seg_dataset": "medxai.io.writers.dicom_seg",
    "segment_measurements": "medxai.io.writers.dicom_sr",
    "write_dicom_sr": "medxai.io.writers.dicom_sr",
    "sidecar_path": "medxai.io.writers.nifti",
    "write_nifti_labels": "medxai.io.writers.nifti",
    "write_nifti_map": "medxai.io.writers.nifti",
    "write_nifti_mask": "medxai.io.writers.nifti",
    "overlay_rgb": "medxai.io.writers.png",
    "window_to_uint8": "medxai.io.writers.png",
    "write_preview_png": "medxai.io.writers.png",
    "PreviewInfo": "medxai.io.writers.preview",
    "write_clinical_preview": "medxai.io.writers.preview",
    "label_statistics": "medxai.io.writers.report",
    "to_plain": "medxai.io.writers.report",
    "write_report_json": "medxai.io.writers.report",
    "warm_dicom_writers": "medxai.io.writers._warm",
}


#: names exported under another name than their module's
_ALIASES = {"warm_dicom_writers": "warm_up"}


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), _ALIASES.get(name, name))
    globals()[name] = value
    return value


__all__ = [
    "write_nifti_labels",
    "write_nifti_map",
    "write_nifti_mask",
    "sidecar_path",
    "write_dicom_seg",
    "dicom_seg_dataset",
    "segment_codes",
    "write_dicom_pm",
    "quantity_code",
    "DEFAULT_PM_SERIES_OFFSET",
    "series_number_for",
    "derived_uids",
    "shared_source_headers",
    "save_dicom",
    "write_dicom_sr",
    "write_dicom_rtstruct",
    "segment_measurements",
    "write_dicom_sc",
    "create_photo_study",
    "PLACEHOLDER_PATIENT_NAME",
    "PLACEHOLDER_PATIENT_ID",
    "overlay_rgb",
    "window_to_uint8",
    "write_preview_png",
    "write_clinical_preview",
    "PreviewInfo",
    "write_report_json",
    "label_statistics",
    "to_plain",
    "warm_dicom_writers",
]
