"""highdicom's lookups in its copy of the standard, memoised.

Every highdicom object (SEG, Parametric Map, SR, SC) asks ``is_attribute_in_iod(attribute,
sop_class_uid)`` several times while it is built: for ContentDate/ContentTime, whether the
source is an image (its pixel data attributes) and whether it is multi-frame. Each question
scans every attribute of every module of the IOD in the standard's tables (highdicom 0.28:
about 10 ms of a photo's SEG, two PMs and SR together, repeated identically for every object).
The answer depends only on the three arguments and highdicom's static copy of the standard, so
:func:`memoise_iod_lookups` puts a cache in front of it, in every highdicom module that imported
it, once per process. A highdicom without that function (or one that renamed it) is left as it
is.

The same call also memoises ``construct_module_tree(module)``: every SEG and Parametric Map
builds the attribute tree of its functional groups module from the standard's tables (highdicom
0.28: ``DimensionIndexSequence.__init__``; about 0.9 ms for the Parametric Map's module, twice
per photo). The tree depends only on the module name; it is built once and frozen (nested
read-only mappings), so a caller that tried to change it would get a TypeError rather than
change what the next caller reads. highdicom 0.28's callers (``DimensionIndexSequence``,
``check_required_attributes``, the legacy converters) only read it: ``in``, ``[]``,
``.items()``, which the frozen tree answers like the dict.

And it makes ``CodedConcept.__hash__`` cheaper: every content item put into an SR content
sequence is filed under the hash of its concept name (highdicom's ``ContentSequence._lut``),
about 330 hashes per photo's SR. highdicom 0.28 computes ``hash(scheme_designator + value)``,
where ``value`` reads ``CodeValue`` with ``LongCodeValue`` and ``URNCodeValue`` as fallbacks
evaluated eagerly (three attribute look-ups, two of them failing, 6 us). The replacement reads
``CodeValue`` first and takes the original ``value`` only where it is absent: the same string,
so the same hash, at half the cost. It is installed only where highdicom's ``CodedConcept`` has
the ``value`` and ``scheme_designator`` properties it reads and a first check on concepts with
each of the three value attributes gives the original's hashes; subclasses keep the original.

Last, ``SOPClass._copy_root_attributes_of_module(dataset, ie, module)`` (the patient, study
and specimen attributes every object copies from its source: about 11 calls per photo) walks
the IOD's modules and every attribute of each module in the standard's tables, and tries to
copy each root attribute, most of them absent (a KeyError each). Which keywords it tries
depends only on the source's SOP class, ``ie``, ``module`` and the tables: the replacement
records them once (by running the original against a recorder), then copies, in the same
order and with highdicom's ``_copy_attribute``, those the source holds. The same elements are
added to the object; the absent ones were skipped before too.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

__all__ = ["memoise_iod_lookups"]

_installed: dict[str, bool] = {}


def memoise_iod_lookups() -> None:
    """Install the caches (once per process; later calls do nothing)."""
    if _installed:
        return
    _installed["done"] = True
    import highdicom._standard_utils as standard  # noqa: F401 - the module that defines it
    import highdicom.base  # noqa: F401 - imports it by name
    import highdicom.image  # noqa: F401 - imports construct_module_tree by name
    import highdicom.sr.content  # noqa: F401 - imports it by name

    _memoise_module_trees(standard)
    _cheaper_concept_hash()
    _memoise_module_copies()
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


def _frozen(tree: Any) -> Any:
    """``tree`` with every dict (recursively) a read-only mapping."""
    if isinstance(tree, Mapping):
        return MappingProxyType({key: _frozen(value) for key, value in tree.items()})
    return tree


def _memoise_module_trees(standard: Any) -> None:
    """Put a cache in front of ``construct_module_tree`` (module docstring), wherever highdicom
    imported it by name; nothing where it does not exist."""
    original = getattr(standard, "construct_module_tree", None)
    if original is None:
        return

    @functools.lru_cache(maxsize=256)
    def construct_module_tree(module: str) -> Any:
        return _frozen(original(module))

    construct_module_tree.__doc__ = original.__doc__
    construct_module_tree.__wrapped__ = original
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "highdicom" and (
            getattr(module, "construct_module_tree", None) is original
        ):
            module.construct_module_tree = construct_module_tree  # type: ignore[attr-defined]


def _cheaper_concept_hash() -> None:
    """Replace ``CodedConcept.__hash__`` by an equal, cheaper one (module docstring)."""
    try:
        from highdicom.sr.coding import CodedConcept
    except ImportError:
        return
    original = CodedConcept.__dict__.get("__hash__")
    value = CodedConcept.__dict__.get("value")
    if (
        original is None
        or not isinstance(value, property)
        or not isinstance(CodedConcept.__dict__.get("scheme_designator"), property)
    ):
        return
    value_of = value.fget
    if value_of is None:
        return

    def __hash__(self: Any) -> int:  # noqa: N807 - the method it replaces
        if type(self) is not CodedConcept:
            return int(original(self))
        try:
            code = self.CodeValue
        except AttributeError:
            code = value_of(self)
        return hash(self.CodingSchemeDesignator + code)

    samples = [
        CodedConcept("121401", "DCM", "Derivation"),
        CodedConcept("a" * 20, "99X", "long"),  # more than 16 characters: LongCodeValue
        CodedConcept("urn:oid:1.2.840.10008.1", "99X", "urn"),  # URNCodeValue
    ]
    __hash__.__wrapped__ = original  # type: ignore[attr-defined]
    if all(__hash__(c) == original(c) for c in samples):
        CodedConcept.__hash__ = __hash__  # type: ignore[method-assign]


class _KeywordRecorder:
    """Stands in for a highdicom SOPClass: records the keywords it is asked to copy."""

    def __init__(self) -> None:
        self.keywords: list[str] = []

    def _copy_attribute(self, dataset: Any, keyword: str) -> None:
        self.keywords.append(keyword)


def _memoise_module_copies() -> None:
    """Memoise which attributes ``SOPClass._copy_root_attributes_of_module`` copies (module
    docstring); nothing where highdicom lacks the method or ``_copy_attribute``."""
    try:
        from highdicom.base import SOPClass
        from pydicom.datadict import tag_for_keyword
    except ImportError:
        return
    original = SOPClass.__dict__.get("_copy_root_attributes_of_module")
    if original is None or "_copy_attribute" not in SOPClass.__dict__:
        return
    lock = threading.Lock()
    keywords: dict[tuple[str, str, str | None], list[tuple[str, Any]]] = {}

    def _copy_root_attributes_of_module(
        self: Any, dataset: Any, ie: str, module: str | None = None
    ) -> None:
        key = (str(dataset.SOPClassUID), ie, module)
        found = keywords.get(key)
        if found is None:
            recorder = _KeywordRecorder()
            original(recorder, dataset, ie, module)
            found = [(kw, tag_for_keyword(kw)) for kw in recorder.keywords]
            with lock:
                keywords[key] = found
        for keyword, tag in found:
            if tag is None or tag in dataset:
                self._copy_attribute(dataset, keyword)

    _copy_root_attributes_of_module.__doc__ = original.__doc__
    _copy_root_attributes_of_module.__wrapped__ = original  # type: ignore[attr-defined]
    SOPClass._copy_root_attributes_of_module = _copy_root_attributes_of_module  # type: ignore[method-assign]
