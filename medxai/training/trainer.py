"""Train a MONAI U-Net with DiceCE loss into a medxai model bundle.

2D picture data (e.g. ISIC dermoscopy) trains in *whole-image* mode: every picture is resized once
to ``spatial_size`` and cached in memory, then augmented on the fly (flips, 90-degree turns,
rotation, scale, colour jitter). 3D volume data trains on random patches of ``roi_size`` (half of
them centred on foreground) after resampling to ``spacing``, and is validated with sliding-window
inference, as it will be used.

The output folder is a bundle (see :mod:`medxai.models.bundle`) holding the best epoch by mean
validation Dice, plus ``training/``: ``checkpoint_last.pt`` (for ``resume``), ``metrics.csv`` (one
row per epoch) and ``train_config.json``.

Stochastic weight averaging (SWA; Izmailov et al. 2018) is optional: with ``swa_epochs`` > 0 the
learning rate anneals to ``swa_lr`` and stays there for the last ``swa_epochs`` epochs, and the
weights at the end of each of those epochs are averaged (``torch.optim.swa_utils``). The batch-norm
statistics of the average are recomputed on training data before it is validated, and the average
competes with the plain network for the best checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss

from medxai._version import __version__
from medxai.choices import AUGMENTATIONS
from medxai.errors import InputError, MedxaiError
from medxai.inference import autocast_context, resolve_device
from medxai.io.atomic import atomic_path, write_text_atomic
from medxai.io.datasets import (
    Pair,
    dataset_json_validation,
    find_pairs,
    is_2d_dataset,
    label_values,
)
from medxai.models.bundle import ModelBundle, network_from_config, save_bundle
from medxai.models.networks import default_unet_args
from medxai.palette import label_color
from medxai.training.validation import dice_per_case

__all__ = ["TrainConfig", "TrainResult", "train"]

LogFn = Callable[[str], None]


@dataclass
class TrainConfig:
    """Everything ``medxai train`` needs; every field has a CLI option of the same name."""

    data: str
    output: str
    val_data: str | None = None
    val_fraction: float = 0.2
    spatial_size: Sequence[int] | None = None
    roi_size: Sequence[int] | None = None
    spacing: Sequence[float] | None = None
    intensity: dict[str, Any] | None = None
    width: int = 16
    depth: int = 5
    num_res_units: int = 2
    dropout: float = 0.1
    norm: str = "batch"
    epochs: int = 50
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    time_budget_min: float | None = None
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    name: str = "custom-unet"
    version: str = "0.1.0"
    description: str = ""
    label_names: Sequence[str] | None = None
    modalities: Sequence[str] = field(default_factory=list)
    samples_per_volume: int = 4
    init_from: str | None = None
    swa_epochs: int = 0
    swa_lr: float | None = None
    augment: str = "photo"
    flip_axes: Sequence[int] | None = None
    command: str = ""


@dataclass
class TrainResult:
    """What a call of :func:`train` achieved."""

    bundle: Path
    epochs_done: int
    best_epoch: int
    best_metric: float
    finished: bool
    seconds: float
    history: list[dict[str, float]]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def _load_2d(pairs: Sequence[Pair], size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and resize every pair once: images ``(N, C, *size)`` float, labels uint8."""
    from medxai.io.photo import read_photo_array
    from medxai.preprocessing.spatial import resize_image, resize_label

    images, labels = [], []
    for pair in pairs:
        img, _ = read_photo_array(pair.image)
        lab, _ = read_photo_array(pair.label)
        if img.shape[1:] != lab.shape[1:]:
            raise InputError(
                f"image is {img.shape[1:]} but its mask {pair.label.name} is {lab.shape[1:]}",
                path=pair.image,
            )
        lab_t = torch.from_numpy(label_values(lab[:1]))
        images.append(resize_image(torch.from_numpy(img), size).to(torch.float16))
        labels.append(resize_label(lab_t, size, num_classes=int(lab_t.max()) + 1 or 2))
    return torch.stack(images), torch.stack(labels)


# 2D augmentation families (medxai.choices.AUGMENTATIONS): ``photo`` for pictures with no up
# (dermoscopy: any rotation, flips, colour jitter); ``radiograph`` for upright projection X-rays
# (small rotations, scale and shift, brightness/contrast/gamma; no flips or turns, the anatomy
# has an up and a side).


def _augment_2d(seed: int, kind: str = "photo") -> Any:
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandRotate90d,
    )

    from medxai.preprocessing.intensity import RandColorJitterd

    keys = ("image", "label")
    if kind == "radiograph":
        aug = Compose(
            [
                RandAffined(
                    keys,
                    prob=0.8,
                    rotate_range=(math.radians(10),),
                    scale_range=(0.15, 0.15),
                    translate_range=(16, 16),
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                ),
                RandColorJitterd(
                    "image", prob=0.8, brightness=0.25, contrast=0.3, saturation=0.0, hue=0.0
                ),
                RandAdjustContrastd("image", prob=0.5, gamma=(0.7, 1.5)),
            ]
        )
        aug.set_random_state(seed)
        return aug
    if kind != "photo":
        raise MedxaiError(f"unknown augmentation {kind!r}", hint=f"use one of {AUGMENTATIONS}")
    aug = Compose(
        [
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandRotate90d(keys, prob=0.5),
            RandAffined(
                keys,
                prob=0.7,
                rotate_range=(math.pi,),
                scale_range=(0.2, 0.2),
                translate_range=(8, 8),
                mode=("bilinear", "nearest"),
                padding_mode="reflection",
            ),
            RandColorJitterd(
                "image", prob=0.8, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03
            ),
        ]
    )
    aug.set_random_state(seed)
    return aug


# ---------------------------------------------------------------------------------------------
# config of the bundle being trained
# ---------------------------------------------------------------------------------------------


def _default_labels(num_classes: int, names: Sequence[str] | None) -> list[dict[str, Any]]:
    """Labels 0..num_classes-1 with their names and the colours of :mod:`medxai.palette`."""
    names = list(names or [])
    out = []
    for v in range(num_classes):
        name = "background" if v == 0 else (names[v - 1] if v - 1 < len(names) else f"label_{v}")
        out.append({"value": v, "name": name, "color": list(label_color(v))})
    return out


def _bundle_config(
    cfg: TrainConfig, is2d: bool, in_channels: int, num_classes: int, intensity: dict[str, Any]
) -> dict[str, Any]:
    net_args = default_unet_args(
        2 if is2d else 3,
        in_channels,
        num_classes,
        width=cfg.width,
        depth=cfg.depth,
        num_res_units=cfg.num_res_units,
        dropout=cfg.dropout,
        norm=cfg.norm,
    )
    pre: dict[str, Any] = {"intensity": intensity}
    inference: dict[str, Any]
    # _load_data has filled in the default sizes
    if is2d:
        assert cfg.spatial_size is not None
        pre["spatial_size"] = list(cfg.spatial_size)
        inference = {"mode": "whole_image", "tta": "flips"}
    else:
        assert cfg.roi_size is not None
        if cfg.spacing:
            pre["spacing"] = [float(s) for s in cfg.spacing]
        inference = {
            "mode": "sliding_window",
            "roi_size": list(cfg.roi_size),
            "overlap": 0.25,
            "sw_batch_size": 4,
            "blend_mode": "gaussian",
        }
    return {
        "network_def": {"_target_": "monai.networks.nets.UNet", **net_args},
        "input": {
            "spatial_dims": 2 if is2d else 3,
            "channels": in_channels,
            "modalities": list(cfg.modalities),
        },
        "preprocessing": pre,
        "inference": inference,
        "labels": _default_labels(num_classes, cfg.label_names),
    }


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------


def _lr_lambda(
    warmup: int, epochs: int, swa_epochs: int = 0, floor: float = 0.0
) -> Callable[[int], float]:
    """Learning-rate factor per epoch: linear warm-up, cosine down to ``floor``, then ``floor``
    for the last ``swa_epochs`` epochs (the SWA phase)."""
    main = epochs - swa_epochs

    def f(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        if epoch >= main:
            return floor
        t = (epoch - warmup) / max(1, main - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def _swa_lr(cfg: TrainConfig) -> float:
    return cfg.swa_lr if cfg.swa_lr is not None else cfg.lr / 4


def _write_metrics_row(path: Path, row: dict[str, float]) -> None:
    """Append ``row``; a file started by an older run keeps its columns (extra keys dropped)."""
    fields = list(row)
    if path.exists():
        with open(path, newline="") as fh:
            fields = next(csv.reader(fh), []) or fields
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


@dataclass
class _Data:
    """A run's training and validation data: 2D pictures cached at ``spatial_size`` (``(N, C,
    *size)`` float16 images, uint8 labels) or 3D volumes (:class:`VolumeData`)."""

    pairs: list[Pair]
    val_pairs: list[Pair]
    in_channels: int
    num_classes: int
    intensity: dict[str, Any]
    tr_img: torch.Tensor | None = None
    tr_lab: torch.Tensor | None = None
    va_img: torch.Tensor | None = None
    va_lab: torch.Tensor | None = None
    volumes: Any = None  # VolumeData for 3D runs

    @property
    def is2d(self) -> bool:
        return self.volumes is None


@dataclass
class _Run:
    """What one training run holds while it trains (and what its checkpoint keeps)."""

    net: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    swa_net: torch.optim.swa_utils.AveragedModel | None
    grad_scaler: torch.amp.GradScaler
    loss_fn: DiceCELoss
    scaler: Any  # ScaleIntensityFromBundle of the bundle's intensity settings
    device: torch.device
    use_amp: bool
    config: dict[str, Any]
    start_epoch: int = 0
    best_metric: float = -1.0
    best_epoch: int = -1
    init_sha: str | None = None  # SHA-256 of the --init-from weights, kept for resumes
    history: list[dict[str, float]] = field(default_factory=list)


def train(cfg: TrainConfig, log: LogFn | None = None) -> TrainResult:
    """Train (or resume training) a bundle as ``cfg`` says. Seeds torch, numpy and random.

    Args:
        cfg: the training configuration.
        log: called with one line of progress text per epoch (the CLI prints it).

    Returns:
        a :class:`TrainResult`; ``finished`` is False when the time budget stopped the run
        early (run again with ``resume=True`` to go on).
    """
    from monai.utils import set_determinism

    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    _check_swa(cfg)
    out, tdir, ckpt_path = _prepare_output(cfg)
    set_determinism(cfg.seed)
    device = resolve_device(cfg.device)
    pairs, val_pairs = _split_pairs(cfg, say)
    data = _load_data(cfg, pairs, val_pairs, say)
    config = _bundle_config(cfg, data.is2d, data.in_channels, data.num_classes, data.intensity)
    write_text_atomic(
        tdir / "train_config.json", json.dumps(asdict(cfg), indent=2, default=str) + "\n"
    )
    run = _build_run(cfg, config, data, device, ckpt_path, say)
    finished, done = _train_epochs(cfg, run, data, tdir, ckpt_path, t_start, say)
    return TrainResult(
        bundle=out,
        epochs_done=done,
        best_epoch=run.best_epoch,
        best_metric=run.best_metric,
        finished=finished,
        seconds=time.perf_counter() - t_start,
        history=run.history,
    )


def _check_swa(cfg: TrainConfig) -> None:
    """Refuse SWA epochs that do not follow the warm-up and at least one other epoch."""
    if cfg.swa_epochs and not 0 < cfg.swa_epochs <= cfg.epochs - max(cfg.warmup_epochs, 1):
        raise MedxaiError(
            f"--swa-epochs {cfg.swa_epochs} does not fit --epochs {cfg.epochs} "
            f"after {cfg.warmup_epochs} warm-up epoch(s)",
            hint="the SWA epochs follow the warm-up (and at least one other "
            "epoch), e.g. --epochs 30 --warmup-epochs 1 --swa-epochs 20",
        )


def _prepare_output(cfg: TrainConfig) -> tuple[Path, Path, Path]:
    """The output folder, its ``training/`` folder (created) and the checkpoint path; refuses
    to start over a run that exists unless resuming."""
    out = Path(cfg.output)
    tdir = out / "training"
    tdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = tdir / "checkpoint_last.pt"
    if ckpt_path.exists() and not cfg.resume:
        raise MedxaiError(
            "holds a training run already",
            path=out,
            hint="pass --resume to continue it, or choose another output folder",
        )
    return out, tdir, ckpt_path


def _split_pairs(cfg: TrainConfig, say: LogFn) -> tuple[list[Pair], list[Pair]]:
    """Training and validation pairs: ``--val-data``, else dataset.json's ``validation`` list,
    else a seeded ``val_fraction`` split of the training data."""
    pairs = find_pairs(cfg.data)
    listed_val = [] if cfg.val_data else dataset_json_validation(cfg.data)
    if cfg.val_data:
        return pairs, find_pairs(cfg.val_data)
    if listed_val:
        say(f"validating on the {len(listed_val)} cases of dataset.json's 'validation' list")
        return pairs, listed_val
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(pairs))
    n_val = max(1, int(round(len(pairs) * cfg.val_fraction)))
    val_pairs = [pairs[i] for i in sorted(order[:n_val])]
    return [pairs[i] for i in sorted(order[n_val:])] or val_pairs, val_pairs


def _load_data(cfg: TrainConfig, pairs: list[Pair], val_pairs: list[Pair], say: LogFn) -> _Data:
    """Read the data (2D: cached at ``cfg.spatial_size``; 3D: :class:`VolumeData`); fills in
    the default ``spatial_size``/``roi_size`` of ``cfg``."""
    if is_2d_dataset(pairs):
        if cfg.augment == "volume":
            raise MedxaiError(
                "--augment volume is the 3D augmentation, and this dataset holds 2D pictures",
                hint="use --augment photo or --augment radiograph for 2D data",
            )
        cfg.spatial_size = list(cfg.spatial_size or (192, 192))
        say(
            f"caching {len(pairs)} training and {len(val_pairs)} validation pictures at "
            f"{tuple(cfg.spatial_size)}"
        )
        tr_img, tr_lab = _load_2d(pairs, cfg.spatial_size)
        va_img, va_lab = _load_2d(val_pairs, cfg.spatial_size)
        num_classes = int(max(tr_lab.max(), va_lab.max())) + 1
        intensity = cfg.intensity or {"kind": "scale", "a_min": 0.0, "a_max": 255.0}
        return _Data(
            pairs,
            val_pairs,
            int(tr_img.shape[1]),
            max(num_classes, 2),
            intensity,
            tr_img,
            tr_lab,
            va_img,
            va_lab,
        )
    from medxai.training.volumes import VolumeData

    cfg.roi_size = list(cfg.roi_size or (96, 96, 96))
    volumes = VolumeData(pairs, val_pairs, cfg, say)
    return _Data(
        pairs,
        val_pairs,
        volumes.in_channels,
        max(volumes.num_classes, 2),
        volumes.intensity,
        volumes=volumes,
    )


def _build_run(
    cfg: TrainConfig,
    config: dict[str, Any],
    data: _Data,
    device: torch.device,
    ckpt_path: Path,
    say: LogFn,
) -> _Run:
    """The network (from ``config``, or ``--init-from``'s weights), loss, optimiser, schedule,
    optional SWA average and AMP scaler; the checkpoint's state when resuming."""
    from medxai.preprocessing.intensity import ScaleIntensityFromBundle

    scaler = ScaleIntensityFromBundle(data.intensity)
    net = network_from_config(config)
    init_sha = None
    if cfg.init_from and not (cfg.resume and ckpt_path.exists()):
        init_sha = _init_weights(net, cfg.init_from, say)
    net = net.to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        _lr_lambda(
            cfg.warmup_epochs,
            cfg.epochs,
            cfg.swa_epochs,
            _swa_lr(cfg) / cfg.lr if cfg.swa_epochs else 0.0,
        ),
    )
    swa_net = torch.optim.swa_utils.AveragedModel(net) if cfg.swa_epochs else None
    use_amp = device.type == "cuda"
    grad_scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    run = _Run(
        net,
        opt,
        sched,
        swa_net,
        grad_scaler,
        loss_fn,
        scaler,
        device,
        use_amp,
        config,
        init_sha=init_sha,
    )
    if cfg.resume and ckpt_path.exists():
        _resume(run, ckpt_path, say)
    return run


def _resume(run: _Run, ckpt_path: Path, say: LogFn) -> None:
    """Load the last checkpoint into ``run``: weights, optimiser, schedule, AMP scaler, SWA
    average, epoch, best score and torch's random state (so that the next epoch is the one the
    uninterrupted run would have trained)."""
    ck = torch.load(ckpt_path, map_location=run.device, weights_only=True)
    run.net.load_state_dict(ck["model"])
    run.opt.load_state_dict(ck["optimizer"])
    run.sched.load_state_dict(ck["scheduler"])
    run.grad_scaler.load_state_dict(ck["grad_scaler"])
    if run.swa_net is not None and "swa_model" in ck:
        run.swa_net.load_state_dict(ck["swa_model"])
    run.start_epoch, run.best_metric, run.best_epoch = (
        ck["epoch"],
        ck["best_metric"],
        ck["best_epoch"],
    )
    run.init_sha = ck.get("init_sha256")
    if "rng_cpu" in ck:  # checkpoints of earlier versions do not have it
        torch.set_rng_state(ck["rng_cpu"].cpu())
        if ck["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([state.cpu() for state in ck["rng_cuda"]])
    say(
        f"resuming after epoch {run.start_epoch} (best Dice {run.best_metric:.4f} at "
        f"{run.best_epoch})"
    )


def _train_epochs(
    cfg: TrainConfig,
    run: _Run,
    data: _Data,
    tdir: Path,
    ckpt_path: Path,
    t_start: float,
    say: LogFn,
) -> tuple[bool, int]:
    """Run the remaining epochs (stopping before one that would overrun the time budget).

    Returns:
        whether the run finished, and the number of epochs done.
    """
    budget = cfg.time_budget_min * 60 if cfg.time_budget_min else None
    last_epoch_s = 0.0
    for epoch in range(run.start_epoch, cfg.epochs):
        elapsed = time.perf_counter() - t_start
        if budget is not None and elapsed + last_epoch_s * 1.1 > budget:
            say(
                f"time budget of {cfg.time_budget_min} min reached after epoch {epoch}; "
                f"resume with --resume"
            )
            return False, epoch
        last_epoch_s = _epoch(cfg, run, data, epoch, tdir, ckpt_path, t_start, say)
    return True, cfg.epochs


def _epoch(
    cfg: TrainConfig,
    run: _Run,
    data: _Data,
    epoch: int,
    tdir: Path,
    ckpt_path: Path,
    t_start: float,
    say: LogFn,
) -> float:
    """One epoch: train, validate (and the SWA average), record, keep the best, checkpoint.
    Returns its seconds."""
    t0 = time.perf_counter()
    lr_used = run.opt.param_groups[0]["lr"]
    run.net.train()
    losses = _train_one_epoch(cfg, run, data, epoch)
    run.sched.step()
    val_dice = _validate(run, data, run.net)
    val_dice_swa, best_net = _swa_step(cfg, run, data, epoch, val_dice)
    epoch_s = time.perf_counter() - t0
    row = {
        "epoch": epoch + 1,
        "train_loss": float(np.mean(losses)),
        "val_dice": val_dice,
        "lr": lr_used,
        "seconds": round(epoch_s, 2),
    }
    if run.swa_net is not None:
        row["val_dice_swa"] = val_dice_swa
    run.history.append(row)
    _write_metrics_row(tdir / "metrics.csv", row)
    epoch_best = val_dice if best_net is run.net else val_dice_swa
    improved = epoch_best > run.best_metric
    if improved:
        run.best_metric, run.best_epoch = epoch_best, epoch + 1
        swa_info = (
            {"epochs_averaged": int(run.swa_net.n_averaged), "lr": _swa_lr(cfg)}
            if run.swa_net is not None and best_net is not run.net
            else None
        )
        _save_best(
            best_net,
            run.config,
            cfg,
            run.best_metric,
            run.best_epoch,
            len(data.pairs),
            len(data.val_pairs),
            run.device,
            time.perf_counter() - t_start,
            swa_info,
            run.init_sha,
        )
    _save_checkpoint(run, epoch, ckpt_path)
    swa_text = f" SWA {val_dice_swa:.4f}" if not math.isnan(val_dice_swa) else ""
    say(
        f"epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} val Dice {val_dice:.4f}"
        f"{swa_text}{' (best)' if improved else ''} {epoch_s:.0f}s"
    )
    return epoch_s


def _train_one_epoch(cfg: TrainConfig, run: _Run, data: _Data, epoch: int) -> list[float]:
    """The optimisation steps of one epoch; returns the batch losses."""
    if data.volumes is not None:
        return [
            _train_step(
                run.net, run.opt, run.loss_fn, run.grad_scaler, x, y, run.device, run.use_amp
            )
            for x, y in data.volumes.train_batches(epoch, cfg.batch_size)
        ]
    assert data.tr_img is not None and data.tr_lab is not None
    g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    aug = _augment_2d(cfg.seed * 7919 + epoch, cfg.augment)
    order = torch.randperm(len(data.tr_img), generator=g)
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    batches = [b for b in batches if len(b) > 1]  # batch norm needs more than one
    losses = []
    for idx in batches:
        # normalise first: the colour jitter works on [0, 1] intensities
        items = [
            aug({"image": run.scaler(data.tr_img[i].float()), "label": data.tr_lab[i]})
            for i in idx.tolist()
        ]
        x = torch.stack([_plain(it["image"]) for it in items])
        y = torch.stack([_plain(it["label"]) for it in items]).long()
        losses.append(
            _train_step(
                run.net, run.opt, run.loss_fn, run.grad_scaler, x, y, run.device, run.use_amp
            )
        )
    return losses


def _swa_step(
    cfg: TrainConfig, run: _Run, data: _Data, epoch: int, val_dice: float
) -> tuple[float, torch.nn.Module]:
    """In the SWA phase: average this epoch's weights in, recompute the average's batch norm
    and validate it. Returns its Dice (NaN outside the phase) and the better network."""
    swa_net = run.swa_net
    if swa_net is None or epoch < cfg.epochs - cfg.swa_epochs:
        return float("nan"), run.net
    swa_net.update_parameters(run.net)
    torch.optim.swa_utils.update_bn(_bn_batches(cfg, run, data, epoch), swa_net, device=run.device)
    val_dice_swa = _validate(run, data, swa_net.module)
    return val_dice_swa, (swa_net.module if val_dice_swa >= val_dice else run.net)


def _validate(run: _Run, data: _Data, model: torch.nn.Module) -> float:
    """Mean foreground Dice of ``model`` on the validation data (3D: sliding window)."""
    model.eval()
    with torch.no_grad():
        if data.volumes is not None:
            return data.volumes.validate(model, run.device)
        assert data.va_img is not None and data.va_lab is not None
        dices = []
        for i in range(0, len(data.va_img), 32):
            x = torch.stack([run.scaler(v.float()) for v in data.va_img[i : i + 32]]).to(run.device)
            with autocast_context(run.device):
                pred = model(x).argmax(1, keepdim=True).cpu()
            dices.append(dice_per_case(pred, data.va_lab[i : i + 32].long(), data.num_classes))
        return float(torch.cat(dices).mean())


def _bn_batches(cfg: TrainConfig, run: _Run, data: _Data, epoch: int) -> Iterator[torch.Tensor]:
    """Augmented training inputs (up to 512 cases, drawn with their own seeds) to recompute
    the average's batch norm; yielded batch by batch so 3D patches are not all held at once.

    The pass runs the network in train mode, so its dropout draws from the global torch RNG:
    a run with SWA trains the plain network on different dropout masks than one without."""
    if data.volumes is not None:
        n = 0
        for x, _y in data.volumes.train_batches(epoch + 1_000_003, cfg.batch_size):
            yield x
            n += len(x)
            if n >= 512:
                return
        return
    assert data.tr_img is not None and data.tr_lab is not None
    aug = _augment_2d(cfg.seed * 7919 + epoch + 1_000_003, cfg.augment)
    g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch + 1)
    idx = torch.randperm(len(data.tr_img), generator=g)[:512].tolist()
    for i in range(0, len(idx), 32):
        yield torch.stack(
            [
                _plain(
                    aug({"image": run.scaler(data.tr_img[j].float()), "label": data.tr_lab[j]})[
                        "image"
                    ]
                )
                for j in idx[i : i + 32]
            ]
        )


def _save_checkpoint(run: _Run, epoch: int, ckpt_path: Path) -> None:
    """Everything a resume needs after ``epoch``, written atomically and durably."""
    state = {
        "epoch": epoch + 1,
        "model": run.net.state_dict(),
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(),
        "grad_scaler": run.grad_scaler.state_dict(),
        "best_metric": run.best_metric,
        "best_epoch": run.best_epoch,
        "init_sha256": run.init_sha,
        # torch's global generator drives dropout: without it a resumed epoch would draw other
        # dropout masks than the uninterrupted run (the batches and augmentations are seeded
        # per epoch)
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if run.swa_net is not None:
        state["swa_model"] = run.swa_net.state_dict()
    with atomic_path(ckpt_path, durable=True) as tmp:
        torch.save(state, tmp)


def _init_weights(net: torch.nn.Module, bundle_path: str, say: LogFn) -> str | None:
    """Start from the weights of an existing bundle (fine-tuning); the networks must match.
    Returns the SHA-256 of those weights."""
    from medxai.models.bundle import load_bundle

    src = load_bundle(bundle_path)
    try:
        net.load_state_dict(src.network.state_dict())
    except RuntimeError as exc:
        raise MedxaiError(
            f"cannot start from {bundle_path}: its network differs ({exc})",
            path=bundle_path,
            hint="use the same --width/--depth/--res-units",
        ) from exc
    say(f"initialised from {src.name} {src.version} ({bundle_path})")
    return src.weights_sha256


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor (MONAI's MetaTensor adds per-op overhead the training loop does not need)."""
    from monai.data import MetaTensor

    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _train_step(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: DiceCELoss,
    grad_scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    use_amp: bool,
) -> float:
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.type, enabled=use_amp):
        loss = loss_fn(net(x), y)
    grad_scaler.scale(loss).backward()
    grad_scaler.step(opt)
    grad_scaler.update()
    return float(loss.detach())


def _save_best(
    net: torch.nn.Module,
    config: dict[str, Any],
    cfg: TrainConfig,
    metric: float,
    epoch: int,
    n_train: int,
    n_val: int,
    device: torch.device,
    seconds: float,
    swa: dict[str, Any] | None = None,
    init_sha: str | None = None,
) -> None:
    import monai

    metadata = {
        "schema": "medxai-bundle/1",
        "name": cfg.name,
        "version": cfg.version,
        "description": cfg.description or f"MONAI UNet trained with medxai on {cfg.data}",
        "task": "segmentation",
        "created_by": f"medxai {__version__}",
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "training": {
            "data": str(cfg.data),
            "val_data": str(cfg.val_data) if cfg.val_data else f"{cfg.val_fraction:.0%} split",
            "n_train": n_train,
            "n_val": n_val,
            "epochs_planned": cfg.epochs,
            "best_epoch": epoch,
            "seconds_to_best": round(seconds, 1),
            "device": str(device),
            "hardware": f"{platform.machine()} {os.cpu_count()} CPU(s)"
            + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
            "seed": cfg.seed,
            "initialised_from": cfg.init_from,
            "initialised_from_sha256": init_sha,
            "command": cfg.command,
            "loss": "DiceCELoss(softmax, include_background=False)",
            "optimizer": f"AdamW(lr={cfg.lr}, weight_decay={cfg.weight_decay}), warmup "
            f"{cfg.warmup_epochs} epochs then cosine"
            + (
                f" to {_swa_lr(cfg)}, constant for the last {cfg.swa_epochs} epochs (SWA)"
                if cfg.swa_epochs
                else ""
            ),
            "weight_averaging": swa,
        },
        "metrics": {"val_mean_dice_train_resolution": round(metric, 4)},
    }
    was_training = net.training
    bundle = ModelBundle(config=config, metadata=metadata, network=net)
    save_bundle(bundle, cfg.output)
    net.train(was_training)
