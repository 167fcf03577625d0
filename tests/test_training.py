"""medxai train: loss goes down on real ISIC pairs; 3D runs on real and synthetic volumes;
bundles round-trip and refuse tampered weights; resume continues a run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medxai.cli.main import cli
from medxai.errors import BundleIntegrityError, InputError, ModelError
from medxai.models.bundle import load_bundle, save_bundle
from medxai.training.datasets import find_pairs
from medxai.training.trainer import TrainConfig, train
from tests.conftest import shared_path
from tests.models import make_volume_dataset


def _isic_subset(tmp: Path, n: int = 8) -> Path:
    src = shared_path("isic2018", "train")
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    for img in sorted((src / "images").glob("*.jpg"))[:n]:
        (tmp / "images" / img.name).symlink_to(img)
        mask = src / "masks" / f"{img.stem}_segmentation.png"
        (tmp / "masks" / mask.name).symlink_to(mask)
    return tmp


def test_training_on_real_isic_pairs_lowers_the_loss(tmp_path: Path) -> None:
    data = _isic_subset(tmp_path / "isic")
    res = train(TrainConfig(data=str(data), output=str(tmp_path / "b"), spatial_size=[48, 48],
                            epochs=6, batch_size=4, width=8, depth=3, lr=5e-3, warmup_epochs=0,
                            val_fraction=0.25, seed=1))
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0] * 0.9, losses
    bundle = load_bundle(res.bundle)
    assert bundle.spatial_dims == 2 and bundle.in_channels == 3
    assert (res.bundle / "training" / "metrics.csv").read_text().count("\n") == 7


def test_resume_continues_and_refuses_to_clobber(tmp_path: Path) -> None:
    data = _isic_subset(tmp_path / "isic", n=6)
    cfg = dict(data=str(data), output=str(tmp_path / "b"), spatial_size=[32, 32], batch_size=3,
               width=4, depth=3, val_fraction=0.34)
    first = train(TrainConfig(epochs=2, **cfg))
    assert first.finished and len(first.history) == 2
    with pytest.raises(Exception, match="--resume"):
        train(TrainConfig(epochs=3, **cfg))
    more = train(TrainConfig(epochs=3, resume=True, **cfg))
    assert [h["epoch"] for h in more.history] == [3]


def test_3d_training_on_synthetic_and_real_volumes(tmp_path: Path) -> None:
    data = make_volume_dataset(tmp_path / "synthetic", n=3)
    res = train(TrainConfig(data=str(data), output=str(tmp_path / "s"), roi_size=[32, 32, 16],
                            epochs=2, warmup_epochs=0, swa_epochs=1, batch_size=2, width=4,
                            depth=3, val_fraction=0.34))
    assert math.isfinite(res.history[-1]["val_dice_swa"])  # SWA's batch-norm pass on patches
    b = load_bundle(res.bundle)
    assert b.spatial_dims == 3 and b.inference["mode"] == "sliding_window"
    # a real MR volume with its tumour label (pyradiomics), as an MSD-style dataset.json
    vols = shared_path("volumes", "pyradiomics_data")
    real = tmp_path / "real"
    real.mkdir()
    items = []
    for n in ("brain1", "brain2"):
        items.append({"image": f"./{n}_image.nrrd", "label": f"./{n}_label.nrrd"})
        for part in ("image", "label"):
            (real / f"{n}_{part}.nrrd").symlink_to(vols / f"{n}_{part}.nrrd")
    (real / "dataset.json").write_text(json.dumps({"training": items}))
    assert len(find_pairs(real)) == 2
    res = train(TrainConfig(data=str(real), output=str(tmp_path / "r"), roi_size=[32, 32, 16],
                            spacing=[4.0, 4.0, 4.0], epochs=1, batch_size=2, width=4, depth=3,
                            val_fraction=0.5))
    assert load_bundle(res.bundle).preprocessing["intensity"]["kind"] == "zscore"


def test_bundle_round_trip_and_tampered_weights(rgb_bundle, tmp_path: Path) -> None:
    copy = save_bundle(rgb_bundle, tmp_path / "copy")
    again = load_bundle(copy)
    for (k, a), (_, b) in zip(rgb_bundle.network.state_dict().items(), again.network.state_dict().items()):
        assert torch.equal(a, b), k
    assert again.weights_sha256 == rgb_bundle.weights_sha256
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rgb_bundle.network.eval()(x), again.network(x))
    weights = copy / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-20] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="SHA-256"):
        load_bundle(copy)
    res = CliRunner().invoke(cli, ["segment", "sample_data/dermoscopy.jpg", "-m", str(copy),
                                   "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "SHA-256" in res.output and "Traceback" not in res.output


def test_bad_bundles_and_datasets(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a model bundle"):
        load_bundle(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="no matching mask"):
        find_pairs(tmp_path)


def test_train_cli_help_lists_layouts() -> None:
    res = CliRunner().invoke(cli, ["train", "--help"])
    assert res.exit_code == 0 and "dataset.json" in res.output


def test_init_from_bundle_fine_tunes_and_checks_the_network(rgb_bundle, tmp_path: Path) -> None:
    from medxai.errors import MedxaiError
    from tests.models import make_picture_dataset

    data = make_picture_dataset(tmp_path / "d", n=6)
    cfg = dict(data=str(data), spatial_size=[32, 32], epochs=1, batch_size=3, depth=3,
               val_fraction=0.34, init_from=str(rgb_bundle.path))
    res = train(TrainConfig(output=str(tmp_path / "ok"), width=4, **cfg))
    training = json.loads((res.bundle / "configs" / "metadata.json").read_text())["training"]
    assert training["initialised_from"] == str(rgb_bundle.path)
    assert training["initialised_from_sha256"] == rgb_bundle.weights_sha256
    # a resumed run keeps the record (from its checkpoint)
    train(TrainConfig(output=str(tmp_path / "ok"), width=4, resume=True,
                      **{**cfg, "epochs": 2}))
    ck = torch.load(tmp_path / "ok" / "training" / "checkpoint_last.pt", weights_only=True)
    assert ck["init_sha256"] == rgb_bundle.weights_sha256
    with pytest.raises(MedxaiError, match="network differs"):
        train(TrainConfig(output=str(tmp_path / "bad"), width=8, **cfg))


def test_lr_schedule_with_swa_phase() -> None:
    from medxai.training.trainer import _lr_lambda

    f = _lr_lambda(warmup=1, epochs=10, swa_epochs=4, floor=0.25)
    factors = [f(e) for e in range(10)]
    assert factors[0] == 0.5 and factors[1] == 1.0
    assert all(a >= b for a, b in zip(factors[1:6], factors[2:6]))
    assert factors[6:] == [0.25] * 4 and factors[5] > 0.25
    plain = _lr_lambda(warmup=1, epochs=10)
    assert plain(9) < 0.05 and plain(1) == 1.0


def test_swa_averages_the_last_epochs_weights(tmp_path: Path) -> None:
    """The averaged weights are the mean of the network after each SWA epoch (read back from the
    checkpoint the trainer writes before it logs), and batch norm is recomputed for them."""
    from medxai.errors import MedxaiError
    from tests.models import make_picture_dataset

    data = make_picture_dataset(tmp_path / "d", n=8)
    out = tmp_path / "swa"
    snapshots: list[dict[str, torch.Tensor]] = []

    def log(line: str) -> None:
        if line.startswith("epoch "):
            ck = torch.load(out / "training" / "checkpoint_last.pt", weights_only=True)
            snapshots.append({k: v.clone() for k, v in ck["model"].items()})

    cfg = TrainConfig(data=str(data), output=str(out), spatial_size=[32, 32], epochs=4,
                      swa_epochs=2, swa_lr=1e-3, lr=4e-3, warmup_epochs=0, batch_size=3,
                      width=4, depth=3, val_fraction=0.25, seed=0)
    res = train(cfg, log=log)
    assert len(snapshots) == 4
    rows = res.history
    assert [math.isnan(r["val_dice_swa"]) for r in rows] == [True, True, False, False]
    assert [round(r["lr"], 6) for r in rows] == [4e-3, 2.5e-3, 1e-3, 1e-3]  # lr used
    ck = torch.load(out / "training" / "checkpoint_last.pt", weights_only=True)
    avg = ck["swa_model"]
    assert int(avg["n_averaged"]) == 2
    for name, w in snapshots[-1].items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        expected = (snapshots[2][name] + snapshots[3][name]) / 2
        torch.testing.assert_close(avg["module." + name], expected)
    bn = [k for k in snapshots[-1] if k.endswith("running_mean")][0]
    assert not torch.equal(avg["module." + bn], snapshots[-1][bn])  # recomputed, not copied
    meta = json.loads((res.bundle / "configs" / "metadata.json").read_text())["training"]
    assert "SWA" in meta["optimizer"]
    best = rows[res.best_epoch - 1]
    swa_won = not math.isnan(best["val_dice_swa"]) and best["val_dice_swa"] >= best["val_dice"]
    assert (meta["weight_averaging"] is not None) == swa_won  # the card says which was saved
    if swa_won:
        assert meta["weight_averaging"]["epochs_averaged"] == res.best_epoch - 2
    saved = load_bundle(res.bundle).network.state_dict()
    if swa_won and res.best_epoch == 4:  # the final average is the checkpoint's
        want = {k[len("module."):]: v for k, v in avg.items() if k.startswith("module.")}
    elif not swa_won:
        want = snapshots[res.best_epoch - 1]
    else:
        want = None  # an earlier average: not kept anywhere else to compare with
    if want is not None:
        for name, w in saved.items():
            torch.testing.assert_close(w, want[name].to(w.dtype))
    for epochs, warmup, swa in ((2, 0, 2), (4, 2, 3), (5, 0, -1)):  # no room, overlaps warm-up
        with pytest.raises(MedxaiError, match="swa-epochs"):
            train(TrainConfig(data=str(data), output=str(tmp_path / "bad"), spatial_size=[32, 32],
                              epochs=epochs, warmup_epochs=warmup, swa_epochs=swa, width=4,
                              depth=3))


def test_volume_augmentation_is_rigid_keeps_labels_and_refuses_2d(tmp_path: Path) -> None:
    from medxai.errors import MedxaiError
    from medxai.training.volumes import augment_patch

    # a centred ball stays a ball of about the same size under rotation (no anisotropic
    # distortion from the non-cubic patch), labels stay {0, 1, 2} and never blend
    shape = (40, 56, 40)
    zz, yy, xx = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij")
    ball = (zz**2 + yy**2 + xx**2) <= 10**2
    y = torch.from_numpy(ball.astype(np.uint8) * 2)[None]
    y[0, 20:, :, :] = torch.where(y[0, 20:] > 0, 1, 0).to(torch.uint8)
    x = torch.randn(1, *shape)
    rng = np.random.default_rng(3)
    sizes = []
    for _ in range(12):
        ax, ay = augment_patch(x, y, rng)
        assert ax.shape == x.shape and ay.shape == y.shape and ay.dtype == torch.uint8
        assert set(torch.unique(ay).tolist()) <= {0, 1, 2}
        fg = torch.nonzero(ay[0] > 0).float()
        extent = fg.max(0).values - fg.min(0).values + 1
        # a ball's extent is the same along every axis whatever the rotation; scaling <= 15 %
        assert float(extent.max() - extent.min()) <= 2.0, extent
        sizes.append(int((ay > 0).sum()))
    assert min(sizes) < int(ball.sum()) < max(sizes) or len(set(sizes)) > 1
    # the 3D augmentation on a 2D dataset is refused before any training
    data = _isic_subset(tmp_path / "isic", n=4)
    with pytest.raises(MedxaiError, match="3D augmentation"):
        train(TrainConfig(data=str(data), output=str(tmp_path / "b"), spatial_size=[32, 32],
                          epochs=1, batch_size=2, width=4, depth=3, augment="volume"))
    # and a 3D run with it trains
    vol = make_volume_dataset(tmp_path / "synthetic", n=3)
    res = train(TrainConfig(data=str(vol), output=str(tmp_path / "v"), roi_size=[32, 32, 16],
                            epochs=1, warmup_epochs=0, batch_size=2, width=4, depth=3,
                            val_fraction=0.34, augment="volume", flip_axes=[0]))
    assert math.isfinite(res.history[-1]["train_loss"])


class _Killed(Exception):
    """Stands for a kill right after an epoch's checkpoint was written."""


def test_resumed_run_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """A run stopped after epoch 2 of 3 (its checkpoint written) and resumed gives the same
    epoch 3 as a run that was never stopped: same loss, Dice, learning rate, weights,
    optimiser state, schedule and best score, bit for bit (one process, CPU, same seed).
    Restoring the weights, AdamW's moments, the schedule's step, the best score or the random
    state of dropout wrongly would each change epoch 3."""
    from tests.models import make_picture_dataset

    data = make_picture_dataset(tmp_path / "data", n=8)
    cfg = dict(data=str(data), spatial_size=[32, 32], epochs=3, batch_size=3, width=4, depth=3,
               val_fraction=0.25, warmup_epochs=1, dropout=0.2, lr=5e-3, seed=3)
    whole = train(TrainConfig(output=str(tmp_path / "whole"), **cfg))
    # the best score is from before the stop: a resume that lost it would call epoch 3 the best
    assert whole.best_epoch < 3 and whole.best_metric > 0

    def stop_after_epoch_2(line: str) -> None:
        if line.startswith("epoch 2/3"):
            raise _Killed(line)

    with pytest.raises(_Killed):
        train(TrainConfig(output=str(tmp_path / "cut"), **cfg), log=stop_after_epoch_2)
    said: list[str] = []
    resumed = train(TrainConfig(output=str(tmp_path / "cut"), resume=True, **cfg), log=said.append)
    assert any(line.startswith("resuming after epoch 2") for line in said), said
    assert [h["epoch"] for h in resumed.history] == [3]

    def without_seconds(row: dict) -> dict:
        return {k: v for k, v in row.items() if k != "seconds"}

    assert without_seconds(resumed.history[0]) == without_seconds(whole.history[2])
    assert (resumed.best_epoch, resumed.best_metric) == (whole.best_epoch, whole.best_metric)
    a = torch.load(tmp_path / "whole" / "training" / "checkpoint_last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "training" / "checkpoint_last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["scheduler"] == b["scheduler"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[k][name], sb[k][name]), (k, name)
    assert (a["best_metric"], a["best_epoch"]) == (b["best_metric"], b["best_epoch"])
    # the bundle holds the same best weights
    assert load_bundle(tmp_path / "whole").weights_sha256 == \
        load_bundle(tmp_path / "cut").weights_sha256
