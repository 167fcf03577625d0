"""highdicom's IOD lookups, memoised.

Every highdicom object (SEG, Parametric Map, SR, SC) asks ``is_attribute_in_iod(attribute,
sop_class_uid)`` several times while it is built: for ContentDate/ContentTime, whether the
source is an image (its pixel data attributes) and whether it is multi-frame. Each question
scans every attribute of every module of the IOD in the standard's tables (highdicom 0.28:
about 10 ms of a photo's SEG, two PMs and SR together, repeated identically for every object).
The answer depends only on the three arguments and highdicom's static copy of the standard, so
:func:`memoise_iod_lookups` puts a cache in front of it, in every highdicom module that imported
it, once per process. A highdicom without that function (or one that renamed it) is left as it
is.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["memoise_iod_lookups"]

_installed: dict[str, bool] = {}


def memoise_iod_lookups() -> None:
    """Install the cache (once per process; later calls do nothing)."""
    if _installed:
        return
    _installed["done"] = True
    import highdicom._standard_utils as standard  # noqa: F401 - the module that defines it
    import highdicom.base  # noqa: F401 - imports it by name
    import highdicom.sr.content  # noqa: F401 - imports it by name

    original = getattr(standard, "is_attribute_in_iod", None)
    if original is None:
        return

    @functools.lru_cache(maxsize=4096)
    def cached(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
        return bool(original(attribute, sop_class_uid, list(exclude) if exclude else exclude))

    def is_attribute_in_iod(
        attribute: str, sop_class_uid: str, exclude_path_elements: Sequence[str] | None = None
    ) -> bool:
        exclude = None if exclude_path_elements is None else tuple(exclude_path_elements)
        return cached(str(attribute), str(sop_class_uid), exclude)

    is_attribute_in_iod.__doc__ = original.__doc__
    is_attribute_in_iod.__wrapped__ = original  # type: ignore[attr-defined]
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "highdicom" and _is(module, original):
            module.is_attribute_in_iod = is_attribute_in_iod  # type: ignore[attr-defined]


def _is(module: Any, fn: Callable[..., bool]) -> bool:
    return getattr(module, "is_attribute_in_iod", None) is fn
