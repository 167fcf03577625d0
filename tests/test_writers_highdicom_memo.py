"""The shortcuts the writers take in highdicom's machinery (medxai.io.writers._highdicom) and in
the copies of the source header (medxai.io.writers._common._own_copy) give what the originals
give; tests/test_writers_same_objects.py pins the objects made with them."""

from __future__ import annotations

import copy

import highdicom._standard_utils as standard
import pytest
from highdicom.base import SOPClass
from highdicom.sr.coding import CodedConcept
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from medxai.io.writers._common import _own_copy
from medxai.io.writers._highdicom import memoise_iod_lookups

memoise_iod_lookups()  # what importing a DICOM writer does

_SEG_FG = "segmentation-multi-frame-functional-groups"
_PM_FG = "parametric-map-multi-frame-functional-groups"


def _header() -> Dataset:
    ds = Dataset()
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "ID1"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows = 512
    ds.PixelSpacing = ["0.5", "0.5"]
    item = Dataset()
    item.CodeValue = "T-D0050"
    ds.AnatomicRegionSequence = Sequence([item])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    return ds


def test_own_copy_equals_the_header_and_nothing_done_to_it_reaches_the_header():
    ds = _header()
    before = copy.deepcopy(ds)
    own = _own_copy(ds)
    assert own == ds and own.file_meta == ds.file_meta
    assert type(own) is type(ds)
    assert all(own[tag] is not ds[tag] for tag in ds.keys())
    own.PatientID = "ID2"  # an existing element: pydicom changes it in place
    own.ImageType[0] = "DERIVED"
    own.PixelSpacing[1] = "0.7"
    own.AnatomicRegionSequence[0].CodeValue = "X"
    own.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    del own.Rows
    assert ds == before and ds.file_meta == before.file_meta


def test_module_trees_are_built_once_frozen_and_equal_to_highdicoms():
    for module in (_SEG_FG, _PM_FG):
        tree = standard.construct_module_tree(module)
        assert standard.construct_module_tree(module) is tree
        fresh = standard.construct_module_tree.__wrapped__(module)

        def plain(node):
            return {k: plain(v) for k, v in node.items()} if hasattr(node, "items") else node

        assert plain(tree) == fresh
        with pytest.raises(TypeError):
            tree["attributes"]["x"] = {}  # type: ignore[index]
    with pytest.raises(AttributeError, match="No such module"):
        standard.construct_module_tree("no-such-module")


@pytest.mark.parametrize(
    "concept",
    [
        CodedConcept("121401", "DCM", "Derivation"),
        CodedConcept("x" * 20, "99MEDXAI", "a long code value"),
        CodedConcept("urn:oid:1.2.840.10008.2.16.4", "DCM", "a URN code value"),
    ],
)
def test_concept_hash_is_highdicoms(concept):
    assert CodedConcept.__hash__ is not CodedConcept.__hash__.__wrapped__  # installed
    assert hash(concept) == CodedConcept.__hash__.__wrapped__(concept)
    assert hash(concept) == hash(concept.scheme_designator + concept.value)


def test_module_copies_copy_what_highdicom_copies():
    source = _header()
    source.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    source.SOPInstanceUID = "1.2.3.4"
    source.StudyInstanceUID = "1.2.3"
    source.StudyID = "S1"
    source.AccessionNumber = ""
    patched = SOPClass._copy_root_attributes_of_module
    original = patched.__wrapped__
    for ie in ("Patient", "Study"):
        got, want = _Into(), _Into()
        patched(got, source, ie)
        original(want, source, ie)
        assert got.copied == want.copied and len(got.copied) > 1
    assert SOPClass._copy_root_attributes_of_module is not original  # installed


class _Into:
    """Records what highdicom's _copy_attribute would add (and that it finds it)."""

    def __init__(self) -> None:
        self.copied: list[str] = []

    def _copy_attribute(self, dataset: Dataset, keyword: str) -> None:
        if keyword in dataset:
            self.copied.append(keyword)
