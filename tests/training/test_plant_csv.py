"""Plant historian CSV exports (training/data/plant_csv.py) and `furnace import`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data.fmf import read_fmf
from training.data.plant_csv import PlantCsvError, parse_time, read_plant_csv, write_fmf

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant-current-sample.csv"


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_real_plant_export_is_read_without_options() -> None:
    pc = read_plant_csv(SAMPLE)
    assert pc.time_column == 6 and pc.current_columns == (0, 1, 2)  # 3 control columns beside
    assert pc.rate_hz == 2.0 and pc.time_format == "us" and pc.header is None
    assert len(pc.t) == 2266 and np.all(np.diff(pc.t) > 0)
    # two rows share "12/16/2018 00:00:00": spread at the rate, half a second apart
    assert pc.t[1] - pc.t[0] == pytest.approx(0.5)
    assert pc.t[0] == pytest.approx(1544918400.0)  # 2018-12-16 00:00:00 UTC
    np.testing.assert_allclose(pc.current[0], [16373.8, 17261.6, 14422.5], rtol=1e-6)
    assert pc.gaps == [] and 0.3 < pc.seconds / 3600 < 0.33


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("2018-12-16 00:00:01", 1544918401.0),
        ("2018-12-16T08:00:01.5+08:00", 1544918401.5),
        ("12/16/2018 00:00:01", 1544918401.0),
        ("1544918401", 1544918401.0),
        ("1544918401500", 1544918401.5),  # milliseconds
        ("16373.8", None),  # a current, not a time
        ("abc", None),
    ],
)
def test_timestamp_formats(cell: str, expected: float | None) -> None:
    got = parse_time(cell)
    assert (got[0] if got else None) == (pytest.approx(expected) if expected else None)


def test_a_header_names_the_columns_and_subsecond_iso_times_are_kept(tmp_path: Path) -> None:
    rows = ["time,setpoint,Ia,Ib,Ic"]
    rows += [
        f"2024-03-01T10:00:{i // 2:02d}.{5 * (i % 2)},15000,{14000 + i},15000,16000"
        for i in range(40)
    ]
    pc = read_plant_csv(_write(tmp_path / "h.csv", rows))
    assert pc.header is not None and pc.current_columns == (2, 3, 4) and pc.time_column == 0
    assert pc.rate_hz == pytest.approx(2.0)
    assert np.allclose(np.diff(pc.t), 0.5)
    assert pc.current[3, 0] == 14003


def test_unix_seconds_and_gaps_kept_as_gaps(tmp_path: Path) -> None:
    t = [1_700_000_000 + 0.5 * i for i in range(40)] + [1_700_000_080 + 0.5 * i for i in range(40)]
    rows = [f"{x:.1f};15000;15100;14900" for x in t]  # semicolons
    pc = read_plant_csv(_write(tmp_path / "u.csv", rows))
    assert pc.time_format == "unix" and pc.current_columns == (1, 2, 3) and len(pc.t) == 80
    assert len(pc.gaps) == 1 and pc.gaps[0][1] - pc.gaps[0][0] == pytest.approx(60.5)


def test_ambiguous_columns_ask_for_options_and_the_options_resolve_them(tmp_path: Path) -> None:
    rows = [f"1/2/2024 10:00:{i // 2:02d},15000,15100,14900,15050,15020,14980" for i in range(40)]
    path = _write(tmp_path / "amb.csv", rows)
    with pytest.raises(PlantCsvError, match="--current-columns"):
        read_plant_csv(path)
    pc = read_plant_csv(path, current_columns=[4, 5, 6], rate_hz=2)
    assert pc.current_columns == (4, 5, 6) and pc.current[0, 0] == 15050


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [
        ("1/2/2024 10:00:99,1,2,3", "line 6: timestamp"),
        ("1/2/2024 09:00:00,15000,15000,15000", "line 6: .*earlier than the row before"),
        ("1/2/2024 10:00:03,15000,15000", "line 6: 3 columns"),
        ("1/2/2024 10:00:03,15000,oops,15000", "line 6 column 2: 'oops' is not a number"),
    ],
)
def test_bad_rows_name_the_line(tmp_path: Path, bad_line: str, match: str) -> None:
    rows = [f"1/2/2024 10:00:{i // 2:02d},15000,15100,14900" for i in range(5)]
    rows += [bad_line] + [f"1/2/2024 10:00:{10 + i // 2:02d},15000,15100,14900" for i in range(10)]
    with pytest.raises(PlantCsvError, match=match):
        read_plant_csv(
            _write(tmp_path / "bad.csv", rows),
            current_columns=[1, 2, 3] if "oops" in bad_line else None,
        )


def test_more_rows_per_timestamp_than_the_rate_is_an_error(tmp_path: Path) -> None:
    rows = [f"1/2/2024 10:00:{i // 4:02d},15000,15100,14900" for i in range(40)]
    path = _write(tmp_path / "fast.csv", rows)
    assert read_plant_csv(path).rate_hz == 4.0  # estimated: four rows a second
    with pytest.raises(PlantCsvError, match="--rate-hz"):
        read_plant_csv(path, rate_hz=2.0)


def test_missing_cells_are_nan_and_kilo_amperes_are_not_phases(tmp_path: Path) -> None:
    rows = [f"1/2/2024 10:00:{i // 2:02d},15000,{'' if i == 3 else 15100},14900" for i in range(40)]
    pc = read_plant_csv(_write(tmp_path / "nan.csv", rows))
    assert np.isnan(pc.current[3, 1]) and np.isfinite(pc.current[4]).all()
    signed = [
        f"1/2/2024 10:00:{i // 2:02d},{(-1) ** i * 3.5},{(-1) ** i * 2.5},1.0" for i in range(40)
    ]
    with pytest.raises(PlantCsvError, match="no three adjacent columns"):
        read_plant_csv(_write(tmp_path / "signed.csv", signed))


def test_import_writes_an_fmf_recording_read_back_sample_for_sample(tmp_path: Path) -> None:
    pc = read_plant_csv(SAMPLE)
    root = write_fmf(pc, tmp_path / "plant")
    (rec,) = read_fmf(root, camera_fps=None)
    assert rec.name == "plant-current-sample" and rec.frames.shape[0] == 0
    np.testing.assert_allclose(rec.t_cur + rec.start_epoch, pc.t)
    np.testing.assert_array_equal(rec.current, pc.current)
    assert (tmp_path / "plant" / "import.json").read_text().count(pc.sha256) == 1
    with pytest.raises(ValueError, match="exists"):
        write_fmf(pc, tmp_path / "plant")
