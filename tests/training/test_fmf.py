"""FMF-Benchmark V2 writer and reader: the files read the way the reference code reads them."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from simulator.config import CAMERA_HEALTH, CURRENT_HEALTH
from simulator.types import Episode, FaultEvent
from tests.helpers.fmf_fixture import make_episode, write_real_fmf_fixture
from training.data.fmf import read_fmf
from training.data.fmf_info import dataset_info, format_dataset_info
from training.data.fmf_write import write_fmf

FAULTS = (
    FaultEvent("missing", "current", 30.0, 40.0),
    FaultEvent("nan", "current", 70.0, 71.0, phase=1),
    FaultEvent("disconnected", "camera", 50.0, 60.0),
)


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    return [
        make_episode("ep0", faults=FAULTS),
        make_episode("ep-1_b", furnace_id="f1", seed=1, seconds=240.0, event_s=None),
    ]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, episodes: list[Episode]) -> Path:
    """Two episodes written once per module; tests only read them."""
    out = tmp_path_factory.mktemp("sim")
    write_fmf(episodes, out, test_fraction=0.2, guard_s=20.0, progress=False)
    return out


def test_files_read_like_the_reference_code(written: Path, episodes: list[Episode]) -> None:
    root = written / "pixel-level"
    for ep in episodes:
        path = root / "videos" / f"{ep.name}.mat"
        head = path.read_bytes()[:512]
        assert head.startswith(b"MATLAB 7.3 MAT-file, Platform: ")
        assert b"HDF5 schema 1.00 ." in head[:116]
        assert head[124:128] == b"\x00\x02IM"
        with h5py.File(path, "r") as f:
            assert f.userblock_size == 512
            assert f["data"].dtype == np.uint8 and f["data"].shape == (len(ep.t_frame), 3, 64, 64)
            assert f["data"].attrs["MATLAB_class"] == b"uint8"
            assert f["label"].attrs["MATLAB_class"] == b"uint8"
            np.testing.assert_array_equal(f["data"][:].transpose(0, 3, 2, 1), ep.frames)
            np.testing.assert_array_equal(f["label"][:].transpose(0, 2, 1), ep.mask)

        cur = pd.read_csv(root / "currents" / f"{ep.name}.csv")
        stamps = pd.read_csv(root / "timestamps" / f"{ep.name}.csv")
        assert cur.shape == (len(ep.t_cur), 4) and len(stamps) == len(ep.t_frame)
        np.testing.assert_array_equal(cur.iloc[:, 1:].to_numpy(np.float32), ep.current)
        assert (cur.iloc[:, 0].value_counts() == 2).all()  # two rows per second
        assert cur.iloc[0, 0] == "2026-01-01 00:00:00"
        # the reference matches a frame to its current second by exact string equality
        cur_times = list(cur.iloc[::2, 0])
        for i in (0, 1, len(stamps) - 1):
            k = cur_times.index(stamps.iloc[i, 0])
            assert k == int(ep.t_frame[i])


def test_split_is_contiguous_with_guard_band(written: Path, episodes: list[Episode]) -> None:
    root = written / "pixel-level"
    train = json.loads((root / "train.json").read_text())
    test = json.loads((root / "test.json").read_text())
    for ep in episodes:
        tr, te = train[f"{ep.name}.mat"], test[f"{ep.name}.mat"]
        n = len(ep.t_frame)
        assert te == list(range(n - round(0.2 * n), n))
        assert tr == list(range(len(tr)))
        assert ep.t_frame[te[0]] - ep.t_frame[tr[-1]] > 20.0
        assert ep.t_frame[te[0]] - ep.t_frame[tr[-1] + 1] <= 20.0  # guard is no wider


def test_sentinel_extension_and_dataset_json(written: Path, episodes: list[Episode]) -> None:
    root = written / "pixel-level"
    npz = np.load(root / "sentinel" / "ep0.npz")
    assert {"label_cur", "sev_cur", "latent_temperature", "health_cur", "health_frame"} <= set(npz)
    assert "frames" not in npz and "mask" not in npz
    assert npz["health_cur"][(episodes[0].t_cur >= 30) & (episodes[0].t_cur < 40)].min() == 8
    meta = json.loads((root / "sentinel" / "ep0.json").read_text())
    assert meta["faults"][0]["kind"] == "missing" and meta["start_epoch"] == episodes[0].start_epoch
    cond = pd.read_csv(root / "sentinel" / "conditions" / "ep0.csv")
    assert len(cond) == 180
    assert (cond["condition"].iloc[60:100] == "overheating").all()
    assert (cond["condition"].iloc[:60] == "normal").all()
    assert (cond["camera_health"].iloc[50:60] == CAMERA_HEALTH["disconnected"]).all()
    info = json.loads((written / "dataset.json").read_text())
    assert info["n_furnaces"] == 2 and [e["name"] for e in info["episodes"]] == ["ep0", "ep-1_b"]
    assert info["label_seconds"]["overheating"] == 40
    assert info["label_seconds"]["normal"] == 180 - 40 + 240
    assert info["faults"] == {"disconnected": 1, "missing": 1, "nan": 1}
    assert info["episodes"][0]["camera_fps"] == 2.0


def test_read_fmf_round_trip(written: Path, episodes: list[Episode]) -> None:
    recs = {r.name: r for r in read_fmf(written)}
    assert set(recs) == {"ep0", "ep-1_b"}
    test = json.loads((written / "pixel-level" / "test.json").read_text())
    for ep in episodes:
        r = recs[ep.name]
        np.testing.assert_array_equal(r.t_cur, ep.t_cur)
        np.testing.assert_array_equal(r.current, ep.current)
        np.testing.assert_array_equal(r.t_frame, ep.t_frame)
        np.testing.assert_array_equal(r.frames, ep.frames)
        np.testing.assert_array_equal(r.label_cur, ep.label_cur)
        np.testing.assert_array_equal(r.label_frame, ep.label_frame)
        np.testing.assert_array_equal(r.frame_label_binary, ep.mask.any(axis=(1, 2)))
        assert np.flatnonzero(r.split == "test").tolist() == test[f"{ep.name}.mat"]
        assert set(r.split) == {"train", "guard", "test"}
        assert r.health_cur is not None and not r.health_cur.any()  # clean view
        assert r.furnace_id == ep.furnace_id and r.start_epoch == ep.start_epoch


def test_read_fmf_applies_faults_on_read(written: Path) -> None:
    (r,) = read_fmf(written, names=["ep0"], apply_faults=True)
    missing = (r.t_cur >= 30) & (r.t_cur < 40)
    assert r.cur_present is not None and (r.cur_present == ~missing).all()
    assert (
        np.isnan(r.current[missing]).all()
        and np.isfinite(r.current[~missing & (r.t_cur < 70)]).all()
    )
    assert np.isnan(r.current[(r.t_cur >= 70) & (r.t_cur < 71), 1]).all()
    assert (r.health_cur[missing] & CURRENT_HEALTH["missing"]).all()
    gone = (r.t_frame >= 50) & (r.t_frame < 60)
    assert r.frame_present is not None and (r.frame_present == ~gone).all()
    assert (
        not r.frames[gone].any() and (r.health_frame[gone] == CAMERA_HEALTH["disconnected"]).all()
    )
    (clean,) = read_fmf(written, names=["ep0"])
    assert np.isfinite(clean.current).all()  # the files themselves stay clean


def test_write_fmf_rejects_bad_names_and_reuse(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rename"):
        write_fmf([make_episode("ep.0")], tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="rename"):
        write_fmf([make_episode("x"), make_episode("x")], tmp_path / "b", progress=False)
    write_fmf([make_episode("x", seconds=150.0)], tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="empty folder"):
        write_fmf([make_episode("y", seconds=150.0)], tmp_path / "c", progress=False)


def test_25fps_episode_is_subsampled_to_2fps(tmp_path: Path) -> None:
    ep = make_episode("fast", seconds=40.0, camera_fps=25.0, event_s=(20.0, 30.0))
    write_fmf([ep], tmp_path, progress=False)
    (r,) = read_fmf(tmp_path)
    assert np.abs(np.diff(r.t_frame) - 0.5).max() < 0.05  # the frame nearest each 0.5-s tick
    idx = np.round(r.t_frame * 25).astype(int)
    np.testing.assert_array_equal(r.frames, ep.frames[idx])
    np.testing.assert_array_equal(r.label_frame, ep.label_frame[idx])
    (full,) = read_fmf(tmp_path, camera_fps=None)
    assert len(full.t_frame) == len(ep.t_frame)


def test_read_real_layout_fixture(tmp_path: Path) -> None:
    name = "SaveToAvi-4-19-21_40_52-6002"
    root = write_real_fmf_fixture(tmp_path, videos=((name, 40.0),), test_s=10.0, gap_s=3.0)
    (full,) = read_fmf(tmp_path, camera_fps=None)
    # 25 and 24 frames alternate per second; frames of second sec sit at sec + j / n
    assert len(full.t_frame) == 20 * 25 + 20 * 24
    np.testing.assert_allclose(full.t_frame[:26], np.r_[2.0 + np.arange(25) / 25, 3.0])
    np.testing.assert_allclose(full.t_cur[:4], [0.0, 0.5, 1.0, 1.5])  # currents lead by 2 s
    with h5py.File(root / "videos" / f"{name}.mat", "r") as f:
        video = f["data"][:].transpose(0, 3, 2, 1)
        binary = f["label"][:].max(axis=(1, 2)) > 0
    np.testing.assert_array_equal(full.frames, video)
    np.testing.assert_array_equal(full.frame_label_binary, binary)
    assert full.label_cur is None and full.sev_cur is None and full.health_cur is None
    assert full.current.shape == (84, 3) and full.current.dtype == np.float32

    (r,) = read_fmf(tmp_path)
    assert np.abs(np.diff(r.t_frame) - 0.5).max() < 0.03 and len(r.t_frame) == 80
    assert set(r.split) == {"train", "guard", "test"}


def test_cache_and_resize(tmp_path: Path) -> None:
    write_real_fmf_fixture(tmp_path, videos=(("v1", 12.0),), px=128, abnormal_s=(5.0, 8.0))
    (a,) = read_fmf(tmp_path, cache=True)
    assert a.frames.shape == (24, 64, 64, 3)
    assert list((tmp_path / "pixel-level" / "cache").glob("v1_*_frames.npy"))
    (b,) = read_fmf(tmp_path, cache=True)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.frame_label_binary, b.frame_label_binary)
    assert a.frame_label_binary.sum() == 6
    write_real_fmf_fixture(tmp_path / "odd", videos=(("v2", 4.0),), px=96)  # bilinear, 1.5x
    (c,) = read_fmf(tmp_path / "odd")
    assert c.frames.shape == (8, 64, 64, 3)
    assert (np.diff(c.frames[0, 0, :, 1].astype(int)) >= 0).all()  # column gradient kept
    assert c.frames[0, 0, -1, 1] > 90 and c.frames[0, -1, 0, 0] > c.frames[0, 0, 0, 0]


def test_dataset_info_simulated_and_real(written: Path, tmp_path: Path) -> None:
    info = dataset_info(written)
    assert info["kind"] == "simulated" and info["n_recordings"] == 2 and info["n_furnaces"] == 2
    assert info["seconds"] == 420 and info["frames"] == 840 and info["frame_size"] == [[64, 64]]
    assert info["label_seconds"]["overheating"] == 40
    assert info["faults"] == {"disconnected": 1, "missing": 1, "nan": 1}
    text = format_dataset_info(info)
    assert "overheating" in text and "missing" in text and "ep-1_b" in text
    json.dumps(info)

    real = write_real_fmf_fixture(tmp_path / "real", videos=(("v", 30.0),), abnormal_s=(10, 14))
    info = dataset_info(real)
    assert info["kind"] == "fmf-benchmark"
    assert info["label_seconds"] == {"normal": 28, "abnormal": 4}  # + 2 s of current lead
    assert "(none recorded)" in format_dataset_info(info)
