"""``medxai batch``: scan, manifest, resume after kill -9, isolation, reporting, dask.

One PACS-like export (tests/fixtures_pacs.py) built from pydicom's files, the project's generated
samples and, when ../shared/data is there, ISIC photos; one uninterrupted reference run; the
other runs (killed and resumed, dask LocalCluster, local worker processes) are compared with it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medxai.batch import Manifest, run_batch
from medxai.batch.job import LOCK_NAME
from medxai.batch.scan import FileInfo, ModelRequirements, fit_reason, group_stacks, scan_export
from medxai.errors import InputError
from medxai.pipeline import SegmentOptions

from tests.conftest import ROOT, SHARED, shared_path
from tests.fixtures_pacs import (
    PacsExport,
    all_files,
    build_pacs_export,
    make_test_bundle,
    write_photo_dicom,
)

# the export holds damaged files on purpose: pydicom's warnings about them are expected
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FORMATS = ["nifti", "json"]
EXPLAIN = "gradcam"
MANIFEST_FILES = {"manifest.sqlite", "manifest.sqlite-wal", "manifest.sqlite-shm",
                  "manifest_series.csv", "manifest_files.csv", "summary.json", LOCK_NAME}
_CLI = ("import sys, warnings; warnings.simplefilter('ignore'); "
        "import medxai.cli.commands.batch; from medxai.cli.main import main; sys.exit(main())")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread, as the subprocesses get (OMP_NUM_THREADS=1): same numbers everywhere,
    and no thread oversubscription on small CI machines."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batch")


@pytest.fixture(scope="module")
def bundle_dir(work: Path) -> Path:
    return make_test_bundle(work / "model")


@pytest.fixture(scope="module")
def export(work: Path) -> PacsExport:
    return build_pacs_export(work / "export", SHARED if SHARED.is_dir() else None)


def _options() -> SegmentOptions:
    return SegmentOptions(formats=FORMATS, explain=EXPLAIN, device="cpu")


@pytest.fixture(scope="module")
def reference(work: Path, export: PacsExport, bundle_dir: Path):
    """The uninterrupted run, in this process."""
    out = work / "out_ref"
    events = []
    summary = run_batch(export.root, out, model=bundle_dir, options=_options(),
                        progress=events.append)
    return out, summary, events


def _outputs(out: Path) -> list[str]:
    return [p for p in all_files(out) if p not in MANIFEST_FILES]


def _series_states(out: Path) -> dict[str, tuple[str, str | None]]:
    with Manifest(out / "manifest.sqlite") as man:
        return {r["output_name"]: (r["state"], r["reason"]) for r in man.series()}


def _maps(out: Path, folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The label map, the saliency map and the labels' affine of one series' output folder."""
    lab = nib.load(out / folder / "labels.nii.gz")
    sal = nib.load(out / folder / "saliency_lesion.nii.gz")
    np.testing.assert_array_equal(sal.affine, lab.affine)
    return np.asarray(lab.dataobj), np.asarray(sal.get_fdata()), lab.affine


def _done_folders(out: Path) -> list[str]:
    return sorted(str(Path(p).parent) for p in _outputs(out) if p.endswith("/labels.nii.gz"))


def _photo_folders(out: Path) -> list[str]:
    """The output folders of the export's generated and ISIC photos (content and size of their
    own each: see tests/fixtures_pacs.py)."""
    with Manifest(out / "manifest.sqlite") as man:
        names = {s["id"]: s["output_name"] for s in man.series("done")}
        return sorted(names[f["series_id"]] for f in man.files()
                      if f["state"] == "done" and f["path"].startswith(("PAT_A/ST_1/", "PAT_D/")))


def _assert_maps_informative(out: Path) -> None:
    """The guard of every comparison below: the reference's maps hold something, and something
    of each image's own (else "equal to the reference" would also hold for a run that wrote
    empty maps, or gave one image's result to another)."""
    folders = _done_folders(out)
    assert len(folders) >= 9
    for folder in folders:
        labels, saliency, _ = _maps(out, folder)
        assert 0.02 < labels.mean() < 0.6, (folder, labels.mean())  # lesion and background
        assert saliency.max() > 0.5 and 0.02 < np.mean(saliency > 0.05) < 0.7, folder
    photos = [_maps(out, f) for f in _photo_folders(out)]
    assert len(photos) >= 6
    assert len({m[0].shape for m in photos}) == len(photos)  # sizes of their own
    for i, (a, sa, _) in enumerate(photos):  # contents of their own: compared on one grid
        for b, sb, _ in photos[i + 1:]:
            w, h = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
            assert np.mean(a[:w, :h] != b[:w, :h]) > 0.05
            assert np.abs(sa[:w, :h] - sb[:w, :h]).max() > 0.2


def _assert_same_results(out: Path, ref: Path, *, exact: bool = True) -> None:
    """``out`` holds the reference's files and states, and the same label and saliency maps:
    equal (saliency within the 16-bit NIfTI quantum), or, for other worker thread counts,
    equal up to rare floating-point ties."""
    assert _outputs(out) == _outputs(ref)
    assert _series_states(out) == _series_states(ref)
    _assert_maps_informative(ref)
    folders = _done_folders(ref)
    assert folders == _done_folders(out)
    for folder in folders:
        labels, saliency, affine = _maps(out, folder)
        ref_labels, ref_saliency, ref_affine = _maps(ref, folder)
        assert labels.shape == ref_labels.shape and saliency.shape == ref_saliency.shape
        np.testing.assert_array_equal(affine, ref_affine)
        if exact:
            np.testing.assert_array_equal(labels, ref_labels, err_msg=folder)
            np.testing.assert_allclose(saliency, ref_saliency, atol=1e-4, rtol=0,
                                       err_msg=folder)
        else:
            assert np.mean(labels == ref_labels) > 0.999, folder
            assert np.mean(np.abs(saliency - ref_saliency) < 1e-3) > 0.999, folder


def _run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-c", _CLI, "batch", *args], cwd=str(ROOT), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# ---------------------------------------------------------------------------------------------
# scan and grouping
# ---------------------------------------------------------------------------------------------

def test_scan_accounts_for_every_file(export: PacsExport) -> None:
    scan = scan_export(export.root, workers=2)
    paths = [f.path for f in scan.files]
    assert paths == all_files(export.root)
    by_path = {f.path: f for f in scan.files}
    for rel, kind in export.skipped_files.items():
        assert by_path[rel].kind == kind, (rel, by_path[rel].reason)
        assert by_path[rel].reason
    for rel in export.failed_files:
        assert by_path[rel].kind == "corrupt" and by_path[rel].failed
        assert "truncated" in by_path[rel].reason
    assert "duplicate of PAT_A/ST_1/SER_01/IM0001.dcm" in by_path["PAT_A/ST_1_copy/IM0001.dcm"].reason
    # every image file is in exactly one stack
    in_stacks = [p for s in scan.stacks for p in s.files]
    assert len(in_stacks) == len(set(in_stacks))
    assert set(in_stacks) == {f.path for f in scan.files if f.kind == "image"}
    # the CT series is one volume of 5 slices; each photo is a 2D image of its own
    ct = [s for s in scan.stacks if s.files[0].startswith("PAT_A/ST_2/CT/")]
    assert len(ct) == 1 and ct[0].form == "volume" and ct[0].n_slices == 5 and ct[0].dims == 3
    photos = [s for s in scan.stacks if s.files[0].startswith("PAT_A/ST_1/")]
    assert len(photos) == 6 and all(s.form == "image" and s.channels == 3 for s in photos)
    assert len({s.study_uid for s in photos}) == 1 and len({s.series_uid for s in photos}) == 2
    multi = [s for s in scan.stacks if s.form == "multiframe"]
    assert {s.n_slices for s in multi} >= {2, 30}
    # DICOMDIR media: every file it lists is scanned like any other; missing ones are named
    assert any(p.startswith("MEDIA/98892003/MR700/") for p in in_stacks)
    assert "1 listed file(s) are missing, e.g. 77654033/CR1/6154" in by_path["MEDIA/DICOMDIR"].reason
    # several studies
    assert len({s.study_uid for s in scan.stacks}) >= 4
    # output folders are made of hashes, digits and sanitised codes only
    for s in scan.stacks:
        assert re.fullmatch(r"study_(\d{8}_)?[0-9a-f]{10}/[A-Za-z0-9]+_s(\d+|x)(_i\d+)?_[0-9a-f]{10}",
                            s.output_name), s.output_name


def test_output_names_never_come_from_header_text(tmp_path: Path) -> None:
    from medxai.samples import make_dermoscopy_photo

    rgb, _ = make_dermoscopy_photo(32, 24, seed=1)
    p = write_photo_dicom(rgb, tmp_path / "x.dcm", study="../../..", series="/etc/passwd",
                          sop="1.2.3", series_number=1, instance=1, study_date="../../")
    import pydicom

    ds = pydicom.dcmread(p)
    ds.Modality = "../../EVIL"
    ds.save_as(p)
    (stack,) = scan_export(tmp_path, workers=1).stacks
    assert ".." not in stack.output_name and stack.output_name.count("/") == 1
    assert stack.output_name.split("/")[1].startswith("EVIL_s1_i1_")


def _fi(path: str, **h) -> FileInfo:
    header = {"study_instance_uid": "1.1", "series_instance_uid": "1.1.1", "modality": "MR",
              "series_number": 3, "instance_number": None, "series_description": "",
              "study_date": "20200101", "rows": 8, "columns": 8, "channels": 1, "frames": 1,
              "orientation": [1, 0, 0, 0, 1, 0], "position": [0, 0, 0], "has_spacing": True,
              "sop_instance_uid": path, "echo_numbers": "", "acquisition_number": "",
              "temporal_position": "", "trigger_time": "", "image_type": ""}
    header.update(h)
    return FileInfo(path, 1, 1, "image", header=header)


def test_stacks_split_by_orientation_and_shared_positions() -> None:
    files = [_fi(f"e{e}_{k}", position=[0, 0, k], echo_numbers=str(e))
             for e in (1, 2) for k in range(3)]
    files += [_fi(f"cor_{k}", orientation=[1, 0, 0, 0, 0, -1], position=[0, k, 0])
              for k in range(2)]
    files += [_fi("photo", orientation=None, position=None, channels=3)]
    stacks = group_stacks(files)
    assert sorted((s.form, len(s.files)) for s in stacks) == [
        ("image", 1), ("volume", 2), ("volume", 3), ("volume", 3)]
    echoes = [s for s in stacks if len(s.files) == 3]
    assert {tuple(s.files) for s in echoes} == {("e1_0", "e1_1", "e1_2"), ("e2_0", "e2_1", "e2_2")}
    assert len({s.id for s in stacks}) == 4
    assert [s.id for s in group_stacks(list(reversed(files)))] == [s.id for s in stacks]


def test_fit_reason_names_modality_dims_and_colour(export: PacsExport) -> None:
    scan = scan_export(export.root, workers=1)
    ct = next(s for s in scan.stacks if s.files[0].startswith("PAT_A/ST_2/CT/"))
    photo = next(s for s in scan.stacks if s.files[0].startswith("PAT_A/ST_1/"))
    rgb2d = ModelRequirements(spatial_dims=2, channels=3, modalities=("XC",))
    ct3d = ModelRequirements(spatial_dims=3, channels=1, modalities=("CT",))
    assert fit_reason(photo, rgb2d) is None
    assert fit_reason(ct, ct3d) is None
    reason = fit_reason(ct, rgb2d)
    assert "modality CT" in reason and "volume of 5 slices" in reason and "greyscale" in reason
    reason = fit_reason(photo, ct3d)
    assert "modality XC" in reason and "2D image" in reason and "colour" in reason
    assert fit_reason(photo, ModelRequirements(2, 3, ())) is None  # no modality list: any


# ---------------------------------------------------------------------------------------------
# the reference run: manifest, outputs, reasons, reports
# ---------------------------------------------------------------------------------------------

def test_manifest_accounts_for_every_file_and_series(reference, export: PacsExport) -> None:
    out, summary, _events = reference
    with Manifest(out / "manifest.sqlite") as man:
        assert man.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        files = {f["path"]: f for f in man.files()}
        series = man.series()
    assert sorted(files) == all_files(export.root)
    assert all(f["state"] in ("done", "skipped", "failed") for f in files.values())
    assert all(f["reason"] for f in files.values() if f["state"] != "done")
    sid_state = {s["id"]: s["state"] for s in series}
    for rel in export.fit_done:
        assert files[rel]["state"] == "done", (rel, files[rel]["reason"])
        assert sid_state[files[rel]["series_id"]] == "done"
    for rel in export.fail_series:
        assert files[rel]["state"] == "failed" and files[rel]["reason"]
    for rel in export.skip_series:
        assert files[rel]["state"] == "skipped"
        assert files[rel]["reason"].startswith("does not fit the model")
    for rel in export.failed_files:
        assert files[rel]["state"] == "failed" and "truncated" in files[rel]["reason"]
    for rel, kind in export.skipped_files.items():
        assert files[rel]["state"] == "skipped" and files[rel]["kind"] == kind
    # outputs exist for every series done, and only for those
    done = [s for s in series if s["state"] == "done"]
    assert len(done) == len(export.fit_done)
    for s in done:
        folder = out / s["output_name"]
        assert sorted(s["outputs"]) == sorted(p.name for p in folder.iterdir())
        assert {"labels.nii.gz", "labels.json", "report.json", "saliency_lesion.nii.gz"} <= \
            set(s["outputs"])
        assert s["total_s"] > 0 and s["predict_s"] is not None and s["worker"]
        report = json.loads((folder / "report.json").read_text())
        assert report["input"]["series_instance_uid"] == s["series_instance_uid"]
    for s in series:
        if s["state"] != "done":
            assert s["reason"] and not (out / s["output_name"]).exists()
    assert not [p for p in out.rglob("*") if ".partial-" in p.name]
    _assert_maps_informative(out)
    # summary, exit code, progress
    assert summary.exit_code == 1  # the truncated files and the damaged RLE image
    assert summary.series["done"] == len(done) and summary.series["failed"] == 1
    assert summary.files["total"] == len(files)
    assert {f.get("file") for f in summary.failed} >= set(export.failed_files)
    assert json.loads((out / "summary.json").read_text())["exit_code"] == 1


def test_progress_reports_counts_and_rate(reference) -> None:
    _out, summary, events = reference
    scan = [e for e in events if e.phase == "scan"]
    proc = [e for e in events if e.phase == "process"]
    assert scan and scan[-1].done == scan[-1].total == summary.scan["headers_read"]
    assert proc[-1].done == proc[-1].total == summary.process["series"]
    assert proc[-1].counts["done"] == summary.this_run["done"] and proc[-1].rate > 0


def test_csv_export_of_the_manifest(reference) -> None:
    import csv

    out, summary, _ = reference
    with open(out / "manifest_series.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == summary.series["total"]
    assert {r["state"] for r in rows} == {"done", "skipped", "failed"}
    assert all(r["reason"] for r in rows if r["state"] != "done")
    with open(out / "manifest_files.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == summary.files["total"]


def test_rerun_skips_what_is_done(reference, export: PacsExport, bundle_dir: Path,
                                  tmp_path: Path) -> None:
    ref, _summary, _ = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    before = {p: (out / p).stat().st_mtime_ns for p in _outputs(out)}
    summary = run_batch(export.root, out, model=bundle_dir, options=_options())
    assert summary.this_run["done"] == summary.this_run["failed"] == 0
    assert summary.scan["headers_read"] == 0  # unchanged files are not read again
    assert {p: (out / p).stat().st_mtime_ns for p in _outputs(out)} == before
    # --retry-failed runs the failure again (it fails again, with its reason)
    summary = run_batch(export.root, out, model=bundle_dir, options=_options(), retry_failed=True)
    assert summary.this_run["retried_failed"] == 1 and summary.this_run["failed"] == 1
    assert summary.this_run["done"] == 0
    # other settings into the same folder are refused
    with pytest.raises(InputError, match="other settings"):
        run_batch(export.root, out, model=bundle_dir,
                  options=SegmentOptions(formats=FORMATS, explain=None))


def test_dead_run_is_recovered(reference, export: PacsExport, bundle_dir: Path,
                               tmp_path: Path) -> None:
    """A series left 'running' (its folder even committed) and a half-written temporary folder:
    the next run redoes the series and removes the leftovers."""
    ref, _summary, _ = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    with Manifest(out / "manifest.sqlite") as man:
        victim = man.series("done")[0]
        man.conn.execute("UPDATE series SET state='running', attempts=1 WHERE id=?",
                         (victim["id"],))
    study = out / victim["output_name"].split("/")[0]
    partial = study / f".{victim['output_name'].split('/')[1]}.partial-99999"
    partial.mkdir()
    (partial / "labels.nii.gz").write_bytes(b"half")
    summary = run_batch(export.root, out, model=bundle_dir, options=_options())
    assert summary.this_run["requeued_after_crash"] == 1 and summary.this_run["done"] == 1
    assert not partial.exists()
    _assert_same_results(out, ref)


def test_a_series_that_kills_its_worker_is_isolated(tmp_path: Path) -> None:
    """A chunk whose worker process dies is retried one series at a time; the series that
    kills its worker fails after 3 attempts, the others are done."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from medxai.batch.job import drive
    from medxai.batch.types import Job, Result

    files = [_fi(f"p{i}", orientation=None, position=None, channels=3) for i in range(3)]
    stacks = group_stacks(files)
    with Manifest(tmp_path / "m.sqlite") as man:
        man.sync_scan(files, stacks, {s.id: None for s in stacks})
        rows = man.pending()
        bad = rows[1]["id"]

        def submit(jobs):
            fut = Future()
            if any(j.id == bad for j in jobs):
                fut.set_exception(BrokenProcessPool("a worker died"))
            else:
                fut.set_result([Result(j.id, "done", outputs=[]) for j in jobs])
            return fut

        def job_for(r):
            return Job(r["id"], tuple(r["files"]), str(tmp_path), r["id"], r["output_name"])

        crashes = []
        drive(man, [rows], job_for, submit,
              wait_any=lambda fs: fs, in_flight=2, worker="test", on_result=man.record,
              on_crash=lambda: crashes.append(1),
              is_crash=lambda e: isinstance(e, BrokenProcessPool))
        series = {r["id"]: r for r in man.series()}
    assert series[bad]["state"] == "failed" and "died 3 times" in series[bad]["reason"]
    assert series[bad]["attempts"] == 3
    assert all(r["state"] == "done" for i, r in series.items() if i != bad)
    assert len(crashes) == 3


def test_a_chunk_run_in_this_process_lives_on_when_the_pool_dies(tmp_path: Path) -> None:
    """With this process among the workers (``workers=None``), a chunk it runs is still in
    flight when a worker process dies: it is neither requeued nor run twice; the pool's other
    chunks are requeued and done."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from medxai.batch.job import drive
    from medxai.batch.types import Job, Result

    files = [_fi(f"p{i}", orientation=None, position=None, channels=3) for i in range(4)]
    stacks = group_stacks(files)
    with Manifest(tmp_path / "m.sqlite") as man:
        man.sync_scan(files, stacks, {s.id: None for s in stacks})
        rows = man.pending()
        here_id, bad, slow = rows[0]["id"], rows[1]["id"], rows[2]["id"]
        here: list[Future] = []
        runs: dict[str, int] = {}

        def submit(jobs):
            fut = Future()
            for j in jobs:
                runs[j.id] = runs.get(j.id, 0) + 1
            if jobs[0].id == here_id:
                here.append(fut)  # still running when the pool breaks
            elif jobs[0].id == slow and runs[slow] == 1:
                pass  # a pool chunk in flight when the pool breaks: it died with it
            elif any(j.id == bad for j in jobs):
                fut.set_exception(BrokenProcessPool("a worker died"))
            else:
                fut.set_result([Result(j.id, "done", outputs=[]) for j in jobs])
            return fut

        def wait_any(fs):
            done = [f for f in fs if f.done()]
            if not done and here:  # only this process's chunk is left: it finishes
                here[0].set_result([Result(here_id, "done", outputs=[])])
                done = [here[0]]
            return done

        def job_for(r):
            return Job(r["id"], tuple(r["files"]), str(tmp_path), r["id"], r["output_name"])

        crashes = []
        drive(man, [[r] for r in rows], job_for, submit, wait_any=wait_any, in_flight=4,
              worker="test", on_result=man.record, on_crash=lambda: crashes.append(1),
              is_crash=lambda e: isinstance(e, BrokenProcessPool),
              survives_crash=lambda f: f in here)
        series = {r["id"]: r for r in man.series()}
    assert runs[here_id] == 1 and series[here_id]["state"] == "done"
    assert series[bad]["state"] == "failed" and len(crashes) == 3
    assert all(series[r["id"]]["state"] == "done" for r in rows[2:])
    assert runs[slow] == 2  # requeued by the first crash
    assert runs[rows[3]["id"]] == 1


def test_streamed_results_are_recorded_once_and_not_run_again_after_a_crash(
    tmp_path: Path,
) -> None:
    """Local workers send each result as it is made (``streamed``): the driver records it at
    once, not again when its chunk comes back, and a chunk whose worker died after sending some
    of its results runs again only the others (and the chunks that died with it only theirs)."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from medxai.batch.job import drive
    from medxai.batch.types import Job, Result

    files = [_fi(f"p{i}", orientation=None, position=None, channels=3) for i in range(6)]
    stacks = group_stacks(files)
    with Manifest(tmp_path / "m.sqlite") as man:
        man.sync_scan(files, stacks, {s.id: None for s in stacks})
        rows = man.pending()
        ids = [r["id"] for r in rows]
        runs: dict[str, int] = {}
        pipe: list[Result] = []
        recorded: list[str] = []
        first = [True]

        def submit(jobs):
            fut = Future()
            for j in jobs:
                runs[j.id] = runs.get(j.id, 0) + 1
            if jobs[0].id == ids[0] and first[0]:
                # the worker streams its first two results, then dies
                first[0] = False
                pipe.extend(Result(j.id, "done", outputs=[]) for j in jobs[:2])
                fut.set_exception(BrokenProcessPool("a worker died"))
            elif jobs[0].id == ids[3] and runs[ids[3]] == 1:
                # another chunk streams one result and dies with the pool (never completes)
                pipe.append(Result(ids[3], "done", outputs=[]))
            else:
                pipe.extend(Result(j.id, "done", outputs=[]) for j in jobs)
                fut.set_result([Result(j.id, "done", outputs=[]) for j in jobs])
            return fut

        def streamed():
            out = list(pipe)
            pipe.clear()
            return out

        def record(r):
            recorded.append(r.id)
            man.record(r)

        def job_for(r):
            return Job(r["id"], tuple(r["files"]), str(tmp_path), r["id"], r["output_name"])

        drive(man, [rows[:3], rows[3:]], job_for, submit,
              wait_any=lambda fs: [f for f in fs if f.done()], in_flight=2, worker="test",
              on_result=record, on_crash=lambda: None,
              is_crash=lambda e: isinstance(e, BrokenProcessPool), streamed=streamed)
        series = {r["id"]: r for r in man.series()}
    assert sorted(recorded) == sorted(ids), "a series was recorded twice or not at all"
    assert all(series[i]["state"] == "done" for i in ids)
    assert runs[ids[0]] == runs[ids[1]] == 1, "a streamed result ran again after the crash"
    assert runs[ids[2]] == 2
    assert runs[ids[3]] == 1 and runs[ids[4]] == runs[ids[5]] == 2


def test_local_worker_processes_stream_each_result(export: PacsExport, bundle_dir: Path,
                                                    tmp_path: Path, monkeypatch) -> None:
    """In real worker processes (forked and spawned alike get the pipe): each result reaches the
    driver through the stream, before its chunk comes back, and is recorded once."""
    from medxai.batch import job as job_module

    seen: list[str] = []
    real = job_module._ResultStream.take

    def take(self):
        got = real(self)
        seen.extend(r.id for r in got)
        return got

    monkeypatch.setattr(job_module._ResultStream, "take", take)
    out = tmp_path / "out"
    summary = run_batch(export.root, out, model=bundle_dir, workers=2, batch_size=4,
                        options=_options())
    with Manifest(out / "manifest.sqlite") as man:
        done = [s["id"] for s in man.series("done")]
    assert len(done) == summary.series["done"] >= 2
    assert len(seen) == len(set(seen)), "a result came twice"
    assert set(done) <= set(seen), "a done series did not come through the stream"


def test_a_series_that_keeps_killing_the_run_fails(tmp_path: Path) -> None:
    """Runs that die while a series is claimed (kill -9, segfault) requeue it; the third time it
    fails instead of being retried forever."""
    files = [_fi("p0", orientation=None, position=None, channels=3)]
    stacks = group_stacks(files)
    sid = stacks[0].id
    with Manifest(tmp_path / "m.sqlite") as man:
        for _ in range(3):
            man.sync_scan(files, stacks, {sid: None})
            assert man.claim([sid], "worker") == [sid]
            man.recover(3)  # the next run starts after this one died
        man.sync_scan(files, stacks, {sid: None})
        (row,) = man.series()
        assert row["state"] == "failed" and "3 times" in row["reason"]
        assert man.retry_failed() == 1 and man.series()[0]["attempts"] == 0


def test_output_folder_in_use_is_refused(reference, export: PacsExport, bundle_dir: Path,
                                         tmp_path: Path) -> None:
    from filelock import FileLock

    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / LOCK_NAME), timeout=0):  # another run (flock / LockFileEx)
        with pytest.raises(InputError, match="another medxai batch run"):
            run_batch(export.root, out, model=bundle_dir, options=_options())
    fcntl = pytest.importorskip("fcntl")  # POSIX: a plain flock by another program counts too
    with open(out / LOCK_NAME, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(InputError, match="another medxai batch run"):
            run_batch(export.root, out, model=bundle_dir, options=_options())


_HOLD_THEN_FORK = """
import os, sys, time
from pathlib import Path
from medxai.batch.job import _locked
with _locked(Path(sys.argv[1])):
    if os.fork() == 0:  # a forked worker process: outlives its parent by up to a second
        time.sleep(30)
        os._exit(0)
    print("forked", flush=True)
    time.sleep(30)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_does_not_keep_the_output_folder_locked(tmp_path: Path) -> None:
    """kill -9 of a run whose forked worker lives on: the next run may start at once. (With
    filelock 4 this holds without medxai's after-fork hook; with filelock 3.x, also supported,
    it fails without it: checked with 3.16.1.)"""
    from medxai.batch.job import _locked

    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_THEN_FORK, str(out)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "forked"
        with pytest.raises(InputError, match="another medxai batch run"):
            with _locked(out):
                pass
        proc.kill()
        proc.wait(10)
        with _locked(out):  # the child still sleeps, with its copy of the descriptor closed
            pass
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_missing_export_is_an_input_error(tmp_path: Path, bundle_dir: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        run_batch(tmp_path / "nope", tmp_path / "out", model=bundle_dir)


def test_isic_photos_from_shared_data(reference, export: PacsExport) -> None:
    shared_path("isic2018", "val", "images")
    out, _summary, _ = reference
    states = {f["path"]: f["state"] for f in Manifest(out / "manifest.sqlite").files()}
    isic = [p for p in states if p.startswith("PAT_D/ISIC/")]
    assert len(isic) == 3 and all(states[p] == "done" for p in isic)


# ---------------------------------------------------------------------------------------------
# batched prediction
# ---------------------------------------------------------------------------------------------

def test_predict_batch_matches_predict(export: PacsExport, bundle_dir: Path) -> None:
    from medxai.batch import predict_batch
    from medxai.inference import predict
    from medxai.io.readers import load_image
    from medxai.models.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    paths = [export.root / p for p in export.fit_done[:3]]
    paths.append(export.root / "PAT_C/US/still/examples_palette.dcm")  # another size
    images = [load_image(p).image for p in paths]
    batched = predict_batch(bundle, images, device="cpu")
    for img, b in zip(images, batched):
        one = predict(bundle, img, device="cpu")
        assert b.labels.shape == one.labels.shape == (1, *img.shape[1:])
        assert np.mean((b.labels == one.labels).numpy()) > 0.999
        np.testing.assert_allclose(b.probabilities.numpy(), one.probabilities.numpy(), atol=1e-4)


def test_batched_path_gives_each_image_its_own_prediction(monkeypatch: pytest.MonkeyPatch,
                                                         reference, export: PacsExport,
                                                         bundle_dir: Path, tmp_path: Path
                                                         ) -> None:
    """2D images go through the network in batches of 4, their saliency maps are made in the
    network's thread, and each prediction and saliency map reaches the write stage with its own
    image: every image's maps equal the reference run's."""
    import medxai.batch.runner as runner

    real = runner.write_stage
    seen = []

    def write_stage(task, progress=None):
        pred = task.predicted.prediction
        assert pred.labels.shape[1:] == task.loaded.image.shape[1:]
        assert task.explained.maps, "the batch made no saliency map"
        assert all(s.shape[1:] == task.loaded.image.shape[1:] for s in task.explained.maps.values())
        seen.append(task.name)
        return real(task, progress)

    monkeypatch.setattr(runner, "write_stage", write_stage)
    out = tmp_path / "out"
    summary = run_batch(export.root, out, model=bundle_dir, batch_size=4, options=_options())
    assert len(seen) == summary.series["done"] == len(export.fit_done)
    _assert_same_results(out, reference[0], exact=False)


# ---------------------------------------------------------------------------------------------
# the CLI: kill -9 and resume, --json, exit codes
# ---------------------------------------------------------------------------------------------

def _done_count(manifest: Path) -> int:
    if not manifest.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{manifest}?mode=ro", uri=True, timeout=1) as c:
            return c.execute("SELECT COUNT(*) FROM series WHERE state='done'").fetchone()[0]
    except sqlite3.OperationalError:  # schema not there yet
        return 0


def _child_pids(pid: int, match) -> list[int]:
    """The child processes of process ``pid`` whose command line ``match`` accepts, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and match(cmd):
            found.append(int(stat.parent.name))
    return sorted(found)


def _writer_pids(pid: int) -> list[int]:
    """The spawned writer processes (``spawn_main`` children) of process ``pid``, from /proc
    (a forked one's command line is its parent's)."""
    return _child_pids(pid, lambda cmd: b"spawn_main" in cmd)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("mode", ["writers 0", "writers 2", "workers 2"])
def test_kill_9_then_resume_gives_the_uninterrupted_result(reference, export: PacsExport,
                                                           bundle_dir: Path, tmp_path: Path,
                                                           mode: str) -> None:
    """kill -9 of the run (the driving process) mid-way, with writer threads, writer processes
    or local worker processes (which exit with it): the resumed run does only what was not
    done, and no child process outlives the run."""
    kind, count = mode.split()
    if count != "0" and not Path("/proc/self/stat").exists():
        pytest.skip("finds the child processes in /proc")
    ref, ref_summary, _ = reference
    out = tmp_path / "out"
    batch = "2" if kind == "workers" else "1"
    args = [str(export.root), "-o", str(out), "--model", str(bundle_dir), "--format",
            ",".join(FORMATS), "--explain", EXPLAIN, "--batch-size", batch, "--device", "cpu",
            f"--{kind}", count]
    proc = _run_cli(args)
    deadline = time.monotonic() + 300
    children: list[int] = []
    try:
        while _done_count(out / "manifest.sqlite") < 1:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no series finished in 300 s"
            time.sleep(0.02)
        children = _worker_pids(proc.pid)  # the CLI's children: writers or workers
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(children) == int(count)
    # within a second of their parent's death, or of their start-up (importing torch) on a
    # loaded machine
    end = time.monotonic() + 60
    while any(_alive(c) for c in children) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(_alive(c) for c in children), "child processes outlived the run"
    done_at_kill = _done_count(out / "manifest.sqlite")
    assert 1 <= done_at_kill < ref_summary.series["done"], "the run was not interrupted mid-way"

    proc = _run_cli(args + ["--json"])
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr
    summary = json.loads(stdout)
    assert summary["this_run"]["done"] == ref_summary.series["done"] - done_at_kill
    assert not [p for p in out.rglob("*") if ".partial-" in p.name or ".old-" in p.name]
    _assert_same_results(out, ref)


def test_writer_processes_give_the_same_result(reference, export: PacsExport,
                                              bundle_dir: Path, tmp_path: Path) -> None:
    """Two writer processes (they load no model): the same folders, labels and manifest as the
    run that writes with threads, results recorded in the order of the series."""
    ref, _summary, _ = reference
    out = tmp_path / "out"
    order = []
    summary = run_batch(export.root, out, model=bundle_dir, options=_options(), writers=2,
                        progress=lambda p: order.append(p.done) if p.phase == "process" else None)
    assert summary.backend == "in process, 2 writer processes"
    _assert_same_results(out, ref)
    with Manifest(out / "manifest.sqlite") as man:
        done = man.series("done")
        writers = {s["worker"] for s in done}
    # both writers, unless one was still starting (importing torch) while the other wrote all
    assert 1 <= len(writers) <= 2
    assert all(w.split(":")[1] != str(os.getpid()) for w in writers)
    assert order == list(range(len(order)))


def _kill_a_child_mid_run(ref_summary, export: PacsExport, bundle_dir: Path, out: Path,
                          option: list[str], children) -> list[int]:
    """Run the CLI with ``option`` (e.g. ``--writers 2``), kill -9 the first of
    ``children(pid)`` once a series is done, and check the run ends as the uninterrupted one:
    every series done, none lost, no partial folder left. The children found before the kill."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("finds the child processes in /proc")
    args = [str(export.root), "-o", str(out), "--model", str(bundle_dir), "--format",
            ",".join(FORMATS), "--explain", EXPLAIN, "--batch-size", "1", "--device", "cpu",
            *option, "--json"]
    proc = _run_cli(args)
    deadline = time.monotonic() + 300
    while _done_count(out / "manifest.sqlite") < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no series finished in 300 s"
        time.sleep(0.02)
    before = children(proc.pid)
    assert len(before) == 2, before
    os.kill(before[0], signal.SIGKILL)
    done_at_kill = _done_count(out / "manifest.sqlite")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr  # the export's one failing series
    assert done_at_kill < ref_summary.series["done"], "the run was not interrupted mid-way"
    summary = json.loads(stdout)
    assert summary["this_run"]["done"] == ref_summary.series["done"]
    assert not [p for p in out.rglob("*") if ".partial-" in p.name or ".old-" in p.name]
    return before


def test_kill_9_of_a_writer_process_loses_and_repeats_nothing(reference, export: PacsExport,
                                                              bundle_dir: Path, tmp_path: Path
                                                              ) -> None:
    """kill -9 of one writer process mid-run: the run goes on (new writers), writes every series
    the dead writer held again, and ends with exactly the uninterrupted result."""
    ref, ref_summary, _ = reference
    out = tmp_path / "out"
    spawned = []

    def writers(pid: int) -> list[int]:
        """The CLI's children: its writer processes. Forked on a CPU run on Linux, so their
        command line is the CLI's own (a spawned one's names spawn_main)."""
        found = _worker_pids(pid)
        spawned.extend(p for p in found if p in _writer_pids(pid))
        return found

    before = _kill_a_child_mid_run(ref_summary, export, bundle_dir, out, ["--writers", "2"],
                                   writers)
    if sys.platform.startswith("linux"):
        assert not spawned, "the writer processes of a CPU run were spawned, not forked"
    _assert_same_results(out, ref)
    with Manifest(out / "manifest.sqlite") as man:
        pids = {int(s["worker"].split(":")[1]) for s in man.series("done")}
        assert all(s["attempts"] == 1 for s in man.series("done"))
    assert pids - set(before), "no new writer process wrote after the kill"


def _worker_pids(pid: int) -> list[int]:
    """The local worker processes of process ``pid`` (forked or spawned; not multiprocessing's
    resource tracker), from /proc."""
    return _child_pids(pid, lambda cmd: b"resource_tracker" not in cmd)


def test_kill_9_of_a_local_worker_process_loses_and_repeats_nothing(
    reference, export: PacsExport, bundle_dir: Path, tmp_path: Path
) -> None:
    """kill -9 of one local worker process mid-run (``--workers 2``): the pool is started
    again, the series the dead worker held run again (it fails without the partial folders'
    removal at the end of the step: the dead worker's stays behind)."""
    ref, ref_summary, _ = reference
    out = tmp_path / "out"
    _kill_a_child_mid_run(ref_summary, export, bundle_dir, out, ["--workers", "2"], _worker_pids)
    _assert_same_results(out, ref, exact=False)
    with Manifest(out / "manifest.sqlite") as man:
        assert all(s["attempts"] <= 2 for s in man.series("done"))


class _KillsItsWriter:
    """Unpickled in a writer process, it kills that process (as kill -9 or a segfault would)."""

    def __reduce__(self):
        return (os._exit, (9,))


def test_a_series_that_kills_its_writer_process_is_isolated(tmp_path: Path) -> None:
    """A writer process that dies breaks the pool: every series it held is written again, one
    at a time; the one that kills its writer each time fails after 3 deaths, the others (here
    tasks without an image: each fails in the write stage, normally) come back in order."""
    import torch

    from medxai.batch.runner import MAX_WRITE_ATTEMPTS, Writers
    from medxai.batch.types import Job
    from medxai.models.bundle import ModelBundle
    from medxai.pipeline import Explained, Predicted, WriteTask

    model = ModelBundle(config={}, metadata={"name": "m"}, network=torch.nn.Identity())

    def task(name, loaded=None):
        return WriteTask(loaded=loaded, model=model, out_root=tmp_path, name=name, formats=[],
                         options=SegmentOptions(), predicted=Predicted(prediction=None),
                         explained=Explained({}, None, {}), device="cpu")

    names = ["a", "bad", "c"]
    with Writers(2) as writers:
        pending = [writers.submit(task(n, _KillsItsWriter() if n == "bad" else None),
                                  Job(n, (), str(tmp_path), n, f"s/{n}"), {"ahead": 0.0})
                   for n in names]
        results = [writers.result(w, pending) for w in pending]
        assert writers.restarts >= 2  # the bad one alone, twice (the others too if they were held)
    assert [r.id for r in results] == names
    bad = results[1]
    assert bad.state == "failed"
    assert bad.reason == f"its writer process died {MAX_WRITE_ATTEMPTS} times while writing it"
    for r in (results[0], results[2]):
        assert r.state == "failed" and r.reason.startswith("internal error: AttributeError")
    assert not list(tmp_path.glob(".*.partial-*"))
    # a writer killed while none is busy: the next series is written by a new one
    if Path("/proc/self/stat").exists():
        with Writers(1) as writers:
            writers.warm()
            deadline = time.monotonic() + 120
            while not (pids := _writer_pids(os.getpid())):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            os.kill(pids[0], signal.SIGKILL)
            time.sleep(1.0)
            w = writers.submit(task("d"), Job("d", (), str(tmp_path), "d", "s/d"), {})
            r = writers.result(w, [w])
        assert r.id == "d" and r.reason.startswith("internal error: AttributeError")


def test_dask_chunks_are_balanced_over_the_workers() -> None:
    from medxai.batch.dask_runner import balanced_chunks

    rows = [{"id": str(i)} for i in range(20)]
    chunks = [rows[i:i + 8] for i in range(0, 20, 8)]
    assert [len(c) for c in balanced_chunks(chunks, 2)] == [5, 5, 5, 5]
    assert [r for c in balanced_chunks(chunks, 2) for r in c] == rows
    assert [len(c) for c in balanced_chunks(chunks, 1)] == [8, 8, 4]
    volumes = [[r] for r in rows[:3]]
    assert balanced_chunks(volumes, 4) == volumes


def test_listen_writes_each_study_with_its_writer_processes(tmp_path: Path) -> None:
    """The DICOM node keeps its writer processes for its life (NodeConfig.writers): a received
    study is processed through them (the manifest names a writer, not the node's process), and
    its DICOM SEG is in the results."""
    from pynetdicom import AE, StoragePresentationContexts

    from medxai.models.registry import load_model
    from medxai.node import DicomNode, NodeConfig
    from tests.orthanc_server import free_port

    node = DicomNode(NodeConfig(workdir=tmp_path / "work", port=free_port(), host="127.0.0.1",
                                allow=["STORESCU"], idle_s=0.5, model=load_model(None),
                                explain=None, device="cpu", min_free_bytes=0, writers=1))
    node.start()
    try:
        assert node._writers is not None and node._writers.processes == 1
        ae = AE(ae_title="STORESCU")
        ae.requested_contexts = StoragePresentationContexts[:120]
        assoc = ae.associate("127.0.0.1", node.port, ae_title="MEDXAI")
        assert assoc.is_established
        status = assoc.send_c_store(ROOT / "sample_data" / "dermoscopy.dcm")
        assert status.Status == 0
        assoc.release()
        deadline = time.monotonic() + 300
        while not [e for e in node.store.events(500) if e["event"] in ("processed",
                                                                          "study_failed")]:
            assert time.monotonic() < deadline, "the study was not processed in 300 s"
            time.sleep(0.2)
        events = [e for e in node.store.events(500) if e["event"] == "processed"]
        assert len(events) == 1, node.store.events(500)
    finally:
        assert node.stop(timeout_s=60)
    (manifest,) = (tmp_path / "work").rglob("manifest.sqlite")
    with Manifest(manifest) as man:
        (done,) = man.series("done")
    assert int(done["worker"].split(":")[1]) != os.getpid()
    assert [p.name for p in manifest.parent.rglob("seg.dcm")] == ["seg.dcm"]


def test_cli_exit_code_0_and_json(tmp_path: Path, bundle_dir: Path) -> None:
    from click.testing import CliRunner

    import medxai.cli.commands.batch  # noqa: F401  (registers the command)
    from medxai.cli.main import cli
    from medxai.samples import make_dermoscopy_photo

    for i in range(2):
        rgb, _ = make_dermoscopy_photo(40, 30, seed=i)
        write_photo_dicom(rgb, tmp_path / "export" / f"s{i}" / "a.dcm", study="1.2.3",
                          series=f"1.2.3.{i}", sop=f"1.2.3.{i}.1", series_number=i, instance=1)
    (tmp_path / "export" / "notes.txt").write_text("not DICOM")
    out = tmp_path / "out"
    args = ["batch", str(tmp_path / "export"), "-o", str(out), "--model", str(bundle_dir),
            "--format", "nifti,json", "--explain", "none", "--device", "cpu"]
    res = CliRunner().invoke(cli, args + ["--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["series"]["done"] == 2 and data["files"]["skipped"] == 1
    assert data["exit_code"] == 0 and data["process"]["images_per_s"] > 0
    res = CliRunner().invoke(cli, args + ["-q"])
    assert res.exit_code == 0
    assert re.search(r"done\s+2\s+2", res.stdout) and "files/s" in res.stdout
    res = CliRunner().invoke(cli, ["batch", str(tmp_path / "missing"), "-o", str(out)])
    assert res.exit_code == 2 and "does not exist" in res.output


# ---------------------------------------------------------------------------------------------
# scale-out: local worker processes, dask LocalCluster
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_result(reference, export: PacsExport,
                                                  bundle_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    ref, _summary, _ = reference
    out = tmp_path / "out"
    summary = run_batch(export.root, out, model=bundle_dir, options=_options(),
                        scheduler="local", workers=1, batch_size=4)
    assert summary.backend.startswith("dask")
    _assert_same_results(out, ref, exact=False)
    with Manifest(out / "manifest.sqlite") as man:
        workers = {s["worker"] for s in man.series("done")}
    assert workers and all(w.split(":")[1] != str(os.getpid()) for w in workers)


@pytest.mark.slow
@pytest.mark.parametrize("start", ["spawn", "fork"])
def test_local_worker_processes_give_the_same_result(reference, export: PacsExport,
                                                     bundle_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     start: str) -> None:
    """Worker processes spawned, and forked from this process (which has run torch with its
    OpenMP threads in earlier tests: a forked worker with one torch thread must not hang)."""
    from medxai.batch import job

    if start not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start} start method here")
    monkeypatch.setattr(job, "worker_start_method", lambda threads: start)
    ref, _summary, _ = reference
    out = tmp_path / "out"
    own = time.process_time()
    summary = run_batch(export.root, out, model=bundle_dir, options=_options(), workers=2,
                        batch_size=2)
    own = time.process_time() - own
    assert summary.backend == "2 local worker processes"
    _assert_same_results(out, ref, exact=False)
    # the workers' CPU time is counted (each ran the model, and a spawned one imported torch):
    # this process only drives them
    assert summary.process["cpu_s"] > own + (1.0 if start == "spawn" else 0.2)


def test_auto_workers_one_per_core_for_long_cpu_runs_of_2d_images(bundle_dir: Path) -> None:
    from medxai.batch.job import (
        AUTO_WORKERS_MAX,
        AUTO_WORKERS_MIN_IMAGES,
        AUTO_WORKERS_MIN_IMAGES_FORKED,
        auto_workers,
    )
    from medxai.models.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    assert bundle.spatial_dims == 2
    many = AUTO_WORKERS_MIN_IMAGES
    assert auto_workers(bundle, many, "cpu", 0, cores=2, start_method="spawn") == 2
    assert auto_workers(bundle, many, "cpu", 0, cores=64) == AUTO_WORKERS_MAX
    # a spawned worker's start is not repaid below the threshold; a forked one's is
    assert auto_workers(bundle, many - 1, "cpu", 0, cores=2, start_method="spawn") == 1
    few = AUTO_WORKERS_MIN_IMAGES_FORKED
    assert auto_workers(bundle, few, "cpu", 0, cores=2, start_method="fork") == 2
    assert auto_workers(bundle, few - 1, "cpu", 0, cores=2, start_method="fork") == 1
    # 64 cores: 8 workers of 8 torch threads each, which cannot be forked
    assert auto_workers(bundle, many - 1, "cpu", 0, cores=64) == 1
    assert auto_workers(bundle, many, "cpu", 3, cores=4) == 1  # writer processes take the writes
    assert auto_workers(bundle, many, "cpu", 0, cores=1) == 1
    # a device this machine lacks: no choice made here (each series then fails saying why)
    assert auto_workers(bundle, many, "cuda:99", 0, cores=2) == 1
    unsaved = load_bundle(bundle_dir)
    unsaved.path = None  # worker processes load the model from its folder
    assert auto_workers(unsaved, many, "cpu", 0, cores=2) == 1
    windowed = load_bundle(bundle_dir)
    windowed.config.setdefault("inference", {})["mode"] = "sliding_window"  # not measured
    assert auto_workers(windowed, many, "cpu", 0, cores=2) == 1


@pytest.mark.slow
def test_default_workers_follow_the_number_of_images(reference, export: PacsExport,
                                                     bundle_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``workers=None``: this process for a short run; worker processes once the run is long
    enough to repay their start-up (the threshold lowered to the test export's size)."""
    from medxai.batch import job

    ref, ref_summary, _ = reference
    short = run_batch(export.root, tmp_path / "short", model=bundle_dir, options=_options(),
                      workers=None, writers=0)
    assert short.backend == "in process"
    images = ref_summary.this_run["done"]
    monkeypatch.setattr(job, "AUTO_WORKERS_MIN_IMAGES", images)
    monkeypatch.setattr(job, "AUTO_WORKERS_MIN_IMAGES_FORKED", images)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    out = tmp_path / "long"
    long = run_batch(export.root, out, model=bundle_dir, options=_options(), workers=None,
                     writers=0, batch_size=2)
    assert long.backend == "this process and 1 local worker process"
    _assert_same_results(out, ref, exact=False)


def test_workers_are_forked_only_where_that_cannot_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fork needs one torch thread per worker (libgomp's pool does not survive a fork) and no
    other thread in this process (it could hold a lock the child would wait on)."""
    import threading

    from medxai.batch.runner import worker_start_method

    monkeypatch.setattr(threading, "active_count", lambda: 1)
    linux = sys.platform.startswith("linux")
    assert worker_start_method(1) == ("fork" if linux else "spawn")
    assert worker_start_method(2) == "spawn"
    monkeypatch.setattr(threading, "active_count", lambda: 2)
    assert worker_start_method(1) == "spawn"


def test_guided_chunks_shrink_towards_the_end() -> None:
    from medxai.batch.schedule import guided_chunks

    rows = [{"id": str(i)} for i in range(40)]
    by8 = [rows[i : i + 8] for i in range(0, 40, 8)]
    cut = guided_chunks(by8, 2)
    assert [len(c) for c in cut] == [8, 8, 6, 5, 4, 3, 2, 2, 2]
    assert [r for c in cut for r in c] == rows  # same series, same order
    assert guided_chunks(by8, 1) == by8  # one pipeline: nothing to balance
    volumes = [[r] for r in rows[:3]]
    assert guided_chunks(volumes, 4) == volumes


def test_a_worker_ready_before_the_wait_ends_it_at_once() -> None:
    """A forked worker process is ready within milliseconds, often between the driver's fill
    and its wait: the wait must end at once (so the driver gives it chunks), not when this
    process's first chunk is done."""
    from concurrent.futures import Future

    from medxai.batch.job import WorkerConfig, _InlineWorker

    here = _InlineWorker(2, 1, WorkerConfig(model="", weights_sha256=None, options=_options()))
    warm: Future = Future()
    here._warm = [warm]
    assert here.in_flight() == 2  # the worker process is still starting
    warm.set_result(None)  # ready now, before the driver waits
    busy: Future = Future()  # this process's chunk, not done
    t0 = time.perf_counter()
    assert here.wait_any([busy]) == []
    assert time.perf_counter() - t0 < 1.0
    assert here.in_flight() == 4
    here.close()


def test_manifest_methods_behind_the_scheduler(tmp_path: Path) -> None:
    """requeue / file_series / file_reasons: the SQL the job and the scheduler used to run
    on the manifest's connection, now Manifest methods."""
    files = [_fi(f"p{i}", orientation=None, position=None, channels=3) for i in range(2)]
    files.append(FileInfo("notes.txt", 1, 1, "not-dicom", reason="not a DICOM file"))
    stacks = group_stacks(files)
    with Manifest(tmp_path / "m.sqlite") as man:
        man.sync_scan(files, stacks, {s.id: None for s in stacks})
        ids = [r["id"] for r in man.pending()]
        assert sorted(man.claim(ids, "w")) == sorted(ids)
        man.requeue(ids[:1])
        states = {r["id"]: r["state"] for r in man.series()}
        assert states == {ids[0]: "pending", ids[1]: "running"}
        owners = dict(man.file_series())
        assert set(owners) == {"p0", "p1", "notes.txt"} and owners["notes.txt"] is None
        assert set(owners.values()) - {None} == set(ids)
        assert man.file_reasons() == {"not a DICOM file": 1}


def test_the_cpu_time_counts_child_processes_that_are_still_running() -> None:
    """summary.json's ``process.cpu_s`` counts the writer processes' CPU time, though they
    end only after the processing step (ended children alone were counted before)."""
    from medxai.batch.job import _cpu_seconds

    code = ("import sys, time\n"
            "t = time.process_time()\n"
            "while time.process_time() - t < 0.4: pass\n"
            "print('busy', flush=True)\n"
            "sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        before = _cpu_seconds()  # the child is running: its first CPU time counts from here
        assert child.stdout is not None and child.stdout.readline().strip() == "busy"
        after = _cpu_seconds()
        assert child.poll() is None, "the child ended: the test would show nothing"
    finally:
        child.communicate("")
    assert after - before > 0.2, f"{after - before:.3f} s: the running child was not counted"
