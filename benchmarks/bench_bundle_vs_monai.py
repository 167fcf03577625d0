"""medxai running a MONAI model-zoo bundle vs plain MONAI with the same config: time and peak
memory.

    python benchmarks/bench_bundle_vs_monai.py [--bundle spleen_ct_segmentation]
        [--input PATH ...] [--roi 96,96,96] [--repeat 1]

The bundle's configs are copied from ../shared/data/model_zoo into a temporary folder with seeded
weights of the right shapes (the zoo's weights are not public here; compute does not depend on
the values). Each run is a fresh Python process, so the peak resident memory is that
run's alone (VmHWM: see ``peak_rss_mb``):

- ``plain``: the bundle's preprocessing (with MONAI's LoadImaged), a MONAI DataLoader, its
  inferer and its postprocessing (with SaveImaged), as ``SupervisedEvaluator`` runs them
  (the evaluator itself needs pytorch-ignite);
- ``medxai``: ``medxai.read_image`` (medxai's reader) + ``medxai.predict`` (the bundle's
  preprocessing without LoadImaged, inferer and postprocessing without SaveImaged); the label
  map is written with nibabel so that both write one NIfTI.

Time is the whole run after imports (read, predict, write). The default input is the
TotalSegmentator CT test volume (NIfTI, 122x101x30 at 3 mm). Prints a table.

    python benchmarks/bench_bundle_vs_monai.py --zoo [--repeat N] [--only NAME ...]

runs every bundle folder of ../shared/data/model_zoo the way tests/test_zoo_corpus.py does
(seeded weights, a DiNTS architecture from a seeded decode, the roi override written into the
copied config for both, the corpus's small real inputs: a 32x32x16 CT crop, a 16x24x16 MR crop,
one file per channel for BraTS), plain MONAI with the overrides a CPU user needs, medxai with
its bundle runner; a bundle medxai refuses gets its one line instead of figures. Prints a
Markdown table (docs/bundles.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_INPUT = SHARED / "dicom/totalsegmentator_tests/tests/reference_files/example_ct_sm.nii.gz"


def make_bundle(name: str, dst: Path, roi: list[int] | None) -> Path:
    import torch
    from monai.bundle import ConfigParser

    out = dst / name
    shutil.copytree(SHARED / "model_zoo" / name / "configs", out / "configs")
    if roi:
        cfg_path = out / "configs" / "inference.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["inferer"]["roi_size"] = roi
        cfg_path.write_text(json.dumps(cfg, indent=2))
    p = ConfigParser()
    p.read_config(str(out / "configs" / "inference.json"))
    p["bundle_root"] = str(out)
    torch.manual_seed(0)
    (out / "models").mkdir()
    torch.save(p.get_parsed_content("network_def").state_dict(), out / "models" / "model.pt")
    return out


def run_plain(bundle: Path, image: Path | list[str], out: Path) -> None:
    import torch
    from monai.data import DataLoader, Dataset, decollate_batch

    sys.path.insert(0, str(ROOT))
    from tests.test_zoo_corpus import plain_parser

    sys.path.insert(0, str(bundle))  # scripts/, as monai.bundle run puts it
    p = plain_parser(bundle)  # bundle_root, and the CPU overrides a plain MONAI user needs
    p["output_dir"] = str(out)
    net = p.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    pre, inferer = p.get_parsed_content("preprocessing"), p.get_parsed_content("inferer")
    post = p.get_parsed_content("postprocessing")
    item = {"image": image if isinstance(image, list) else str(image)}
    batch = next(iter(DataLoader(Dataset([item], transform=pre), batch_size=1, num_workers=0)))
    with torch.no_grad():
        batch["pred"] = inferer(batch["image"], net)
    post(decollate_batch(batch, detach=True)[0])


def run_medxai(bundle: Path, image: Path | list[str], out: Path) -> None:
    import nibabel as nib
    import numpy as np

    from medxai.inference import predict
    from medxai.io.channels import load_channels
    from medxai.io.readers import load_image
    from medxai.models.registry import load_model

    model = load_model(bundle)
    loaded = load_channels(image) if isinstance(image, list) else load_image(image)
    pred = predict(model, loaded.image, device="cpu", source=str(loaded.path))
    out.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(pred.labels[0].numpy().astype(np.uint8), pred.affine.numpy()),
             str(out / "labels.nii.gz"))


def child(kind: str, bundle: Path, image: Path | list[str], out: Path) -> None:
    import monai  # noqa: F401
    import torch  # noqa: F401  (imports are not timed)

    if kind == "medxai":
        import medxai.inference  # noqa: F401
    t = time.perf_counter()
    (run_plain if kind == "plain" else run_medxai)(bundle, image, out)
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM of /proc/self/status (the high-water mark of
    its own address space since exec). ``ru_maxrss`` is not used where VmHWM exists: Linux keeps
    the parent's high-water mark across fork and exec, so a child of a large parent (the zoo
    mode builds every network) would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: children run with bytecode caching on, as on a user's machine (an environment with
#: PYTHONDONTWRITEBYTECODE recompiles medxai's modules in every medxai run, not MONAI's)
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def generated_ct(folder: Path, shape: tuple[int, ...]) -> Path:
    """A synthetic CT of ``shape`` voxels at 0.8 x 0.8 x 2.5 mm (int16 HU: air, a body cylinder
    of soft tissue with noise, a denser 'spleen' ellipsoid), as NIfTI."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot((i - shape[0] / 2) / (0.42 * shape[0]), (j - shape[1] / 2) / (0.35 * shape[1]))
    vol = np.full(shape, -1000, dtype=np.int16)
    body = r < 1.0
    for k in range(shape[2]):
        sl = vol[..., k]
        sl[body] = (40 + rng.normal(0, 20, int(body.sum()))).astype(np.int16)
        e = (((i - 0.62 * shape[0]) / 40) ** 2 + ((j - 0.4 * shape[1]) / 30) ** 2
             + ((k - shape[2] / 2) / (0.2 * shape[2])) ** 2) < 1
        sl[e] = 110
    path = folder / f"generated_ct_{'x'.join(map(str, shape))}.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([-0.8, -0.8, 2.5, 1.0])), str(path))
    return path


def measure(kind: str, bundle: Path, image: Path | list[str], out: Path) -> dict[str, float]:
    images = [str(p) for p in image] if isinstance(image, list) else [str(image)]
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--bundle-dir", str(bundle),
                           "--input", *images, "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=CHILD_ENV)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def zoo(repeat: int, only: list[str] | None) -> None:
    """Every zoo bundle folder (see the module docstring): a Markdown table."""
    sys.path.insert(0, str(ROOT))
    from medxai.errors import ModelError
    from medxai.models.registry import load_model
    from tests.test_zoo_corpus import BUNDLES, _channel_files, _modality, make_inputs, seeded_bundle

    print("| bundle | network | input | MONAI s | medxai s | time x | MONAI MB | medxai MB "
          "| mem x |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = make_inputs(work / "inputs")
        for name in BUNDLES:
            if only and name not in only:
                continue
            modality, channels = _modality(name)
            _, nifti = inputs[modality]
            image: Path | list[str] = (
                [str(f) for f in _channel_files(nifti, channels)] if channels > 1 else nifti
            )
            bundle = seeded_bundle(name, work, calib=None)
            try:
                net = load_model(bundle).contract.network
            except ModelError as exc:
                why = str(exc).splitlines()[0].split(": ", 1)[-1]
                print(f"| {name} | refused | | | | | | | {why} |", flush=True)
                continue
            res: dict[str, list[dict[str, float]]] = {"plain": [], "medxai": []}
            for r in range(repeat):
                for kind in ("plain", "medxai"):
                    res[kind].append(measure(kind, bundle, image, work / f"{name}_{kind}{r}"))
            tp = min(m["seconds"] for m in res["plain"])
            tm = min(m["seconds"] for m in res["medxai"])
            mp = max(m["peak_mb"] for m in res["plain"])
            mm = max(m["peak_mb"] for m in res["medxai"])
            shape = "x".join(map(str, nib_shape(nifti))) + (f" x{channels} ch" if channels > 1
                                                            else "")
            print(f"| {name} | {net} | {modality} {shape} | {tp:.2f} | {tm:.2f} | {tm / tp:.3f} "
                  f"| {mp:.0f} | {mm:.0f} | {mm / mp:.3f} |", flush=True)


def nib_shape(path: Path) -> tuple[int, ...]:
    import nibabel as nib

    return tuple(int(v) for v in nib.load(str(path)).shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default="spleen_ct_segmentation")
    ap.add_argument("--input", nargs="*", default=None)
    ap.add_argument("--roi", default=None, help="override the inferer's roi_size, e.g. 64,64,64")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--generate", default=None,
                    help="also a generated CT of this many voxels, e.g. 512,512,200")
    ap.add_argument("--zoo", action="store_true", help="every bundle of the model zoo")
    ap.add_argument("--only", nargs="*", default=None, help="with --zoo: these bundles only")
    ap.add_argument("--child", choices=("plain", "medxai"))
    ap.add_argument("--bundle-dir")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        given = args.input if len(args.input) > 1 else Path(args.input[0])
        child(args.child, Path(args.bundle_dir), given, Path(args.out))
        return
    if args.zoo:
        zoo(args.repeat, args.only)
        return
    inputs = [Path(p) for p in (args.input or [DEFAULT_INPUT])]
    roi = [int(v) for v in args.roi.split(",")] if args.roi else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(args.bundle, Path(tmp), roi)
        if args.generate:
            shape = tuple(int(v) for v in args.generate.split(","))
            inputs.append(generated_ct(Path(tmp), shape))
        for image in inputs:
            res: dict[str, list[dict[str, float]]] = {"plain": [], "medxai": []}
            for r in range(args.repeat):
                for kind in ("plain", "medxai"):
                    res[kind].append(measure(kind, bundle, image, Path(tmp) / f"{kind}{r}"))
            best = {k: min(v, key=lambda m: m["seconds"]) for k, v in res.items()}
            peak = {k: max(m["peak_mb"] for m in v) for k, v in res.items()}
            rows.append((image.name, best["plain"]["seconds"], best["medxai"]["seconds"],
                         peak["plain"], peak["medxai"]))
    print(f"bundle {args.bundle}, roi {roi or 'as configured'}, best of {args.repeat}, CPU")
    print(f"{'input':<28} {'MONAI s':>9} {'medxai s':>9} {'time x':>7} "
          f"{'MONAI MB':>9} {'medxai MB':>10} {'mem x':>6}")
    for name, tp, tm, mp, mm in rows:
        print(f"{name:<28} {tp:>9.2f} {tm:>9.2f} {tm / tp:>7.3f} {mp:>9.0f} {mm:>10.0f} "
              f"{mm / mp:>6.3f}")


if __name__ == "__main__":
    main()
