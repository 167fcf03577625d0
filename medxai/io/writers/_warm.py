"""The DICOM writers' one-time set-up, done ahead (e.g. while a batch scans its export)."""

from __future__ import annotations

__all__ = ["warm_up"]


def warm_up() -> None:
    """Import the DICOM writers and load highdicom's tables of the standard now (its module
    attribute map is a 22 MB JSON file: 0.6-0.9 s of CPU, once per process, that the first SEG
    would otherwise pay), e.g. in a thread while a batch scans its export."""
    import highdicom._standard_utils as standard

    import medxai.io.writers.dicom_sc  # noqa: F401 - the placeholder study of a photo
    import medxai.io.writers.dicom_sr  # noqa: F401 - imports the SEG and PM writers

    for name in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
        getter = getattr(standard, name, None)
        if callable(getter):
            getter()
