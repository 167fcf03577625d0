"""medxai's `segment` work vs a hand-written MONAI script doing the same work, on the same photos.

Per image, every side does: load the JPEG, scale to [0, 1], resize to the model's 192x192, forward
(optionally with flip TTA: identity + one flip per axis, softmax averaged), resize the class
scores back to the photo's size, argmax, save the mask as a uint8 ``.nii.gz``.

Sides (measured interleaved, medians of the repetitions):

- ``medxai``: ``load_image`` + ``predict`` + ``write_nifti_labels`` (explain off) -- the calls
  ``medxai segment`` makes for the mask, with their checks, metadata, atomic writes and the JSON
  sidecar.
- ``monai``: a plain MONAI script: ``LoadImage(PILReader, ensure_channel_first)``,
  ``ScaleIntensityRange``, ``Resize(mode="area")`` (MONAI's default, anti-aliased), forward,
  ``Resize(mode="bilinear")`` back, ``AsDiscrete(argmax)``, ``SaveImage(.nii.gz, uint8)``.
- ``minimal``: the exact operations medxai performs (Pillow decode, torch ``interpolate`` bilinear
  with antialias, nibabel save), written inline with no checks: the floor for medxai's overhead.

The target is medxai <= 1.10x the faster of the baselines (overhead <= 10 %).

Also reported, for information: end-to-end ``segment_path`` (default outputs NIfTI+PNG+JSON,
without and with Grad-CAM), and the inference time on a ~1024x768 photo at 1 and 2 threads
(target < 1 s on 2 cores).

Usage::

    python benchmarks/bench_segment_vs_monai.py                 # 10 photos, 3 reps, TTA off
    python benchmarks/bench_segment_vs_monai.py --tta both --e2e-images 2   # as in docs/
    python benchmarks/bench_segment_vs_monai.py --images 20 --reps 5 --tta both --json
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _bench_utils import (  # noqa: E402
    header_line,
    interleaved,
    isic_bundle,
    isic_photos,
    machine_info,
    markdown_table,
    median,
    emit,
    photo_1024x768,
    set_threads,
    temp_dir,
)


# --------------------------------------------------------------------------------------------
# the three sides
# --------------------------------------------------------------------------------------------

def medxai_side(bundle: Any, path: Path, out: Path) -> None:
    from medxai.inference import predict
    from medxai.io.readers import load_image
    from medxai.io.writers import write_nifti_labels

    loaded = load_image(path)
    pred = predict(bundle, loaded.image, device="cpu", source=str(path))
    write_nifti_labels(pred.labels[0].numpy(), pred.affine.numpy(), out / "labels.nii.gz",
                       bundle.labels, model_name=bundle.name, model_version=bundle.version)


def _tta_softmax(net: torch.nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    """(1, K, *spatial) mean softmax over identity (+ one flip per spatial axis)."""
    prob = torch.softmax(net(x), dim=1)
    if tta:
        for ax in range(2, x.ndim):
            prob = prob + torch.softmax(net(x.flip(ax)), dim=1).flip(ax)
        prob = prob / (x.ndim - 1)
    return prob


class MonaiScript:
    """What a MONAI user would write (transforms created once, like in a script)."""

    def __init__(self, net: torch.nn.Module, size: tuple[int, int], tta: bool, out: Path) -> None:
        from monai.transforms import (
            AsDiscrete,
            LoadImage,
            Resize,
            SaveImage,
            ScaleIntensityRange,
        )

        self.net, self.size, self.tta = net, size, tta
        self.load = LoadImage(reader="PILReader", image_only=True, ensure_channel_first=True)
        self.scale = ScaleIntensityRange(a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True)
        self.resize = Resize(spatial_size=size, mode="area")
        self.argmax = AsDiscrete(argmax=True)
        self.save = SaveImage(output_dir=str(out), output_postfix="labels", output_ext=".nii.gz",
                              output_dtype=np.uint8, resample=False, separate_folder=False,
                              print_log=False, squeeze_end_dims=False)
        # squeeze_end_dims=False: MONAI 1.6's SaveImage fails on 2D maps with the default
        # (spatial_resample gets spatial_size None); the file is then (W, H, 1, 1).
        self.Resize = Resize

    def __call__(self, path: Path) -> None:
        img = self.load(str(path))                           # (3, W, H) MetaTensor
        x = self.resize(self.scale(img))                     # (3, 192, 192)
        self.net.eval()
        with torch.inference_mode():
            prob = _tta_softmax(self.net, x.as_tensor()[None].float(), self.tta)[0]
        back = self.Resize(spatial_size=img.shape[1:], mode="bilinear")(prob)
        labels = self.argmax(back).to(torch.uint8)           # (1, W, H)
        self.save(labels.as_tensor(), meta_data={"filename_or_obj": img.meta["filename_or_obj"],
                                                 "affine": img.affine})


def minimal_side(net: torch.nn.Module, path: Path, size: tuple[int, int], tta: bool,
                 out: Path) -> None:
    """The operations medxai performs, inline, without checks/metadata/atomic writes."""
    import nibabel as nib
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))                  # (H, W, 3), read-only view
    x = torch.from_numpy(arr).permute(2, 1, 0).float()       # (3, W, H), a view
    x = (x / 255.0).clamp(0, 1)
    grid = x.shape[1:]
    x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    with torch.inference_mode():
        prob = _tta_softmax(net, x, tta)
    prob = F.interpolate(prob, size=tuple(grid), mode="bilinear", align_corners=False)[0]
    labels = prob.argmax(0).to(torch.uint8).numpy()
    img = nib.Nifti1Image(labels[:, :, None], np.diag([-1.0, -1.0, 1.0, 1.0]))
    nib.save(img, str(out / "labels.nii.gz"))


# --------------------------------------------------------------------------------------------

warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def _ms(xs: list[float]) -> str:
    return f"{median(xs) * 1e3:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10, help="number of photos (default 10)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per image (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--tta", choices=("off", "on", "both"), default="off",
                    help="flip TTA on both sides: off (default; the stricter test of overhead), "
                         "on, or both settings")
    ap.add_argument("--e2e-reps", type=int, default=2,
                    help="repetitions of the end-to-end segment_path rows (default 2)")
    ap.add_argument("--e2e-images", type=int, default=1,
                    help="photos for the end-to-end rows (default 1, the largest)")
    ap.add_argument("--untrained", action="store_true",
                    help="use an untrained network even if trained weights exist")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args(argv)

    from medxai.inference import tta_mode

    set_threads(args.threads)
    info = machine_info(args.threads)
    result: dict[str, Any] = {"machine": info, "args": vars(args)}
    tables: list[str] = [f"<!-- {header_line(info)} -->"]
    with temp_dir() as tmp:
        photos, photo_source = isic_photos(args.images, tmp)
        result["photos"] = photo_source
        bundle, model_source = isic_bundle(use_trained=not args.untrained)
        result["model"] = model_source
        size = tuple(int(s) for s in bundle.preprocessing["spatial_size"])
        from PIL import Image

        dims = {}
        for p in photos:
            p.read_bytes()  # warm the page cache
            with Image.open(p) as im:
                dims[p] = im.size
        settings = {"off": [False], "on": [True], "both": [False, True]}[args.tta]
        summary_rows = []
        detail_rows = []
        result["compare"] = []
        for tta in settings:
            import copy

            b = copy.copy(bundle)
            b.config = copy.deepcopy(bundle.config)
            # like with like: the baselines do flip TTA (or none) and no post-processing
            b.config["inference"]["tta"] = "flips" if tta else "none"
            b.config.pop("postprocessing", None)
            for d in ("mx", "mn", "mi"):
                (tmp / d).mkdir(exist_ok=True)
            script = MonaiScript(b.network, size, tta, tmp / "mn")
            per: dict[str, list[float]] = {"medxai": [], "monai": [], "minimal": []}
            per_wall: dict[str, list[float]] = {"medxai": [], "monai": [], "minimal": []}
            for i, p in enumerate(photos):
                t = interleaved({
                    "medxai": lambda p=p: medxai_side(b, p, tmp / "mx"),
                    "monai": lambda p=p: script(p),
                    "minimal": lambda p=p: minimal_side(b.network, p, size, tta, tmp / "mi"),
                }, reps=args.reps, warmup=1 if i == 0 else 0)
                for k in per:
                    per[k].append(median(t.cpu[k]))
                    per_wall[k].append(median(t[k]))
                base = min(median(t.cpu["monai"]), median(t.cpu["minimal"]))
                detail_rows.append([
                    "on" if tta else "off", p.name, "x".join(map(str, dims[p])),
                    f"{_ms(t.cpu['medxai'])} ({_ms(t['medxai'])})",
                    f"{_ms(t.cpu['monai'])} ({_ms(t['monai'])})",
                    f"{_ms(t.cpu['minimal'])} ({_ms(t['minimal'])})",
                    f"{median(t.cpu['medxai']) / base:.2f}"])
                result["compare"].append({"tta": tta, "image": p.name, "size": dims[p],
                                          "wall_s": dict(t), "cpu_s": t.cpu})
            mean = {k: float(np.mean(v)) for k, v in per.items()}
            mean_w = {k: float(np.mean(v)) for k, v in per_wall.items()}
            r_mo, r_mi = mean["medxai"] / mean["monai"], mean["medxai"] / mean["minimal"]
            rw_mo, rw_mi = mean_w["medxai"] / mean_w["monai"], mean_w["medxai"] / mean_w["minimal"]
            worst = max(r_mo, r_mi)
            summary_rows.append([
                "on (3 passes)" if tta else "off (1 pass)", len(photos),
                *(f"{mean[k] * 1e3:.0f} ({mean_w[k] * 1e3:.0f})"
                  for k in ("medxai", "monai", "minimal")),
                f"{r_mo:.2f} ({rw_mo:.2f})", f"{r_mi:.2f} ({rw_mi:.2f})",
                "met" if worst <= 1.10 else "NOT met"])
            result.setdefault("summary", []).append({
                "tta": tta, "cpu_ms_per_image": {k: v * 1e3 for k, v in mean.items()},
                "wall_ms_per_image": {k: v * 1e3 for k, v in mean_w.items()},
                "cpu_ratio_vs_monai": r_mo, "cpu_ratio_vs_minimal": r_mi,
                "wall_ratio_vs_monai": rw_mo, "wall_ratio_vs_minimal": rw_mi})
        tables.append(
            f"### medxai predict + write_nifti_labels vs plain MONAI (CPU, {args.threads} "
            f"thread(s), explain off)\n\nms per image = mean over photos of the median of "
            f"{args.reps} interleaved reps; **process CPU time** (wall time in brackets). "
            f"Target judged on CPU time against the faster baseline.\n"
            f"photos: {photo_source}; model: {model_source}\n\n"
            + markdown_table(["TTA", "images", "medxai ms", "MONAI script ms",
                              "minimal ms", "medxai / MONAI", "medxai / minimal",
                              "target <= 1.10"], summary_rows))
        tables.append("#### per image: CPU ms (wall ms); ratio = medxai / faster baseline, CPU"
                      "\n\n" + markdown_table(
                          ["TTA", "image", "W x H", "medxai", "MONAI", "minimal", "ratio"],
                          detail_rows))

        # ---- end-to-end segment_path (info) ----------------------------------------------
        from medxai.pipeline import SegmentOptions, segment_path

        e2e = photos[: max(1, args.e2e_images)]
        opts_plain = SegmentOptions(explain=None, device="cpu", overwrite=True)
        opts_cam = SegmentOptions(explain="gradcam", device="cpu", overwrite=True)
        e2e_rows = []
        result["end_to_end"] = []

        def breakdown_text(bk: dict[str, float]) -> str:
            return ", ".join(f"{n} {s * 1e3:.0f}" for n, s in bk.items())

        for p in e2e:
            breakdown: dict[str, dict[str, float]] = {}

            def run(opts: SegmentOptions, key: str, p: Path = p) -> None:
                r = segment_path(p, bundle, tmp / key, opts)
                breakdown[key] = r.report["timings_s"]

            t = interleaved({
                "explain off": lambda: run(opts_plain, "plain"),
                "Grad-CAM (the default)": lambda: run(opts_cam, "cam"),
            }, reps=args.e2e_reps, warmup=1)
            for k in t:
                bk = breakdown["plain" if "off" in k else "cam"]
                e2e_rows.append([p.name, "x".join(map(str, dims[p])), k,
                                 f"{_ms(t.cpu[k])} ({_ms(t[k])})", breakdown_text(bk)])
                result["end_to_end"].append({"image": p.name, "case": k, "wall_s": t[k],
                                             "cpu_s": t.cpu[k], "last_breakdown_s": bk})
        tables.append(
            f"### end-to-end `segment_path`, default outputs NIfTI + PNG + JSON (bundle TTA "
            f"{tta_mode(bundle.inference)}; {args.threads} thread(s); median of "
            f"{args.e2e_reps}; CPU ms (wall ms))\n\n"
            + markdown_table(["image", "W x H", "explain", "total", "wall-time breakdown of "
                              "the last run, ms (report.json timings_s)"], e2e_rows))

        # ---- ~1024x768 inference at 1 and 2 threads -------------------------------------
        from medxai.inference import predict
        from medxai.io.readers import load_image

        p768, desc = photo_1024x768(tmp)
        rows768 = []
        result["photo_1024x768"] = {"image": desc, "rows": []}
        last: dict[str, Any] = {}

        def seg768() -> None:
            last["r"] = segment_path(p768, bundle, tmp / "e768",
                                     SegmentOptions(device="cpu", overwrite=True))

        reps768 = max(3, args.reps)
        for threads in sorted({1, 2, args.threads}):
            set_threads(threads)
            t = interleaved({
                "predict (bundle TTA)": lambda: predict(bundle, load_image(p768).image,
                                                        device="cpu"),
                "read + predict + write NIfTI": lambda: medxai_side(bundle, p768, tmp / "mx"),
                "segment_path, defaults (Grad-CAM, NIfTI+PNG+JSON)": seg768,
            }, reps=reps768, warmup=1)
            for k in t:
                wall = median(t[k]) * 1e3
                extra = breakdown_text(last["r"].report["timings_s"]) if "segment" in k else ""
                rows768.append([threads, k, f"{wall:.0f}", _ms(t.cpu[k]),
                                "met" if wall < 1000 else "NOT met", extra])
                result["photo_1024x768"]["rows"].append({"threads": threads, "case": k,
                                                         "wall_s": t[k], "cpu_s": t.cpu[k]})
        set_threads(args.threads)
        tables.append(
            f"### inference on a ~1024x768 photo: {desc} (bundle TTA "
            f"{tta_mode(bundle.inference)}, post-processing "
            f"{bundle.config.get('postprocessing')}; median of {reps768})\n\n"
            + markdown_table(["torch threads", "what", "wall ms", "CPU ms",
                              "target: wall < 1000 ms", "breakdown (ms)"], rows768))
    result["machine_end_loadavg"] = machine_info(args.threads)["loadavg_1_5_15"]
    tables.append(f"<!-- load average at end: {result['machine_end_loadavg']} -->")
    emit(result, "\n\n".join(tables), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
