"""Plant historian exports of the electrode current: CSV in, times and phase currents out.

A plant's historian writes rows of values and a timestamp, in whatever column order, with or
without a header, and often with a timestamp that only resolves seconds while the current is
sampled faster (docs/data-format.md, "Plant CSV exports"). `read_plant_csv` finds the time
column and the three phase columns (or takes them from the caller), parses the timestamps
(ISO 8601, `M/D/YYYY HH:MM:SS`, or Unix seconds), spreads rows that share one timestamp
string at the sampling rate, keeps gaps as gaps, and refuses anything it cannot read with an
error that names the row and what to pass. numpy and the standard library only.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

# Unix seconds this reader accepts as timestamps: 2001-09-09 .. 2096-10-02.
UNIX_RANGE = (1.0e9, 4.0e9)
MIN_ROWS = 8
PHASE_RATIO = 3.0  # phase columns: positive medians within this factor of one another
_NUM = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_US_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})[ T](\d{1,2}):(\d{2})(?::(\d{2})(\.\d+)?)?$")
_PHASE_NAMES = (
    ("a", "b", "c"),
    ("ia", "ib", "ic"),
    ("phase_a", "phase_b", "phase_c"),
    ("current_a", "current_b", "current_c"),
    ("i_a", "i_b", "i_c"),
    ("l1", "l2", "l3"),
)
_TIME_NAMES = ("ts", "time", "timestamp", "datetime", "date_time", "date")
_MISSING = ("", "nan", "na", "null", "none", "-", "#n/a", "bad", "i/o timeout")


class PlantCsvError(ValueError):
    """A plant CSV this reader cannot read unambiguously; the message says what to pass."""


@dataclass
class PlantCurrent:
    """One plant export read: Unix times and phase currents, in file order.

    Attributes:
        t: (N,) Unix seconds, strictly increasing (rows sharing a timestamp string spread at
            the sampling rate).
        current: (N, 3) A, phases in the order of `current_columns`; NaN where a cell was
            empty or a historian's bad-value marker.
        rate_hz: the sampling rate used to spread rows (given, or estimated from the file).
        gaps: (start, end) Unix seconds of the holes longer than 3 sample periods.
    """

    path: Path
    t: NDArray[np.float64]
    current: NDArray[np.float32]
    rate_hz: float
    time_column: int
    current_columns: tuple[int, int, int]
    header: list[str] | None
    time_format: str  # "iso" | "us" | "unix"
    sha256: str
    gaps: list[tuple[float, float]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Covered time, gaps excluded (rows x sample period)."""
        return float(len(self.t) / self.rate_hz)

    def summary(self) -> dict[str, Any]:
        """What a manifest or a CLI records about the source (no values)."""
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "rows": int(len(self.t)),
            "rate_hz": self.rate_hz,
            "start": _iso(float(self.t[0])),
            "end": _iso(float(self.t[-1])),
            "hours": round(self.seconds / 3600.0, 4),
            "gaps": len(self.gaps),
            "time_column": self.time_column,
            "current_columns": list(self.current_columns),
            "time_format": self.time_format,
        }

    def slice(self, start: float, end: float) -> PlantCurrent:
        """The rows with start <= t < end (Unix s), as a new PlantCurrent."""
        keep = (self.t >= start) & (self.t < end)
        return PlantCurrent(
            self.path,
            self.t[keep],
            self.current[keep],
            self.rate_hz,
            self.time_column,
            self.current_columns,
            self.header,
            self.time_format,
            self.sha256,
            [g for g in self.gaps if g[0] >= start and g[1] < end],
        )


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds")


def _is_number(s: str) -> bool:
    return bool(_NUM.match(s.strip()))


def _is_missing(s: str) -> bool:
    return s.strip().lower() in _MISSING


def parse_time(s: str) -> tuple[float, str] | None:
    """Unix seconds and the format name of one timestamp cell, or None if it is none.

    ISO 8601 (`2018-12-16 00:00:00`, `2018-12-16T00:00:00.5+08:00`; no zone means UTC),
    `M/D/YYYY HH:MM[:SS[.f]]` (US historian exports; UTC) and Unix seconds in UNIX_RANGE.
    """
    s = s.strip()
    if not s:
        return None
    if _is_number(s):
        v = float(s)
        if UNIX_RANGE[0] <= v <= UNIX_RANGE[1]:
            return v, "unix"
        if UNIX_RANGE[0] <= v / 1000.0 <= UNIX_RANGE[1]:
            return v / 1000.0, "unix"  # milliseconds
        return None
    m = _US_DATE.match(s)
    if m:
        mo, d, y, hh, mi = (int(m.group(i)) for i in range(1, 6))
        sec = int(m.group(6) or 0)
        frac = float(m.group(7) or 0.0)
        try:
            dt = datetime(y, mo, d, hh, mi, sec, tzinfo=UTC)
        except ValueError:
            return None
        return dt.timestamp() + frac, "us"
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp(), "iso"


def _sniff_rows(path: Path, raw: bytes) -> list[list[str]]:
    """The non-empty rows of the file's bytes `raw` (`path` names it in errors)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = raw.decode("gb18030")  # Chinese-locale historians
        except UnicodeDecodeError as exc:
            msg = f"{path}: neither UTF-8 nor GB18030 text ({exc}): export the file as UTF-8"
            raise PlantCsvError(msg) from exc
    sample = text[:8192]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [r for r in csv.reader(text.splitlines(), dialect) if any(c.strip() for c in r)]
    return rows


def _has_header(row: Sequence[str]) -> bool:
    return any(not _is_number(c) and parse_time(c) is None and not _is_missing(c) for c in row)


def _find_time_column(rows: Sequence[Sequence[str]], header: Sequence[str] | None) -> int:
    width = len(rows[0])
    probe = rows[: min(len(rows), 50)]
    found = []
    for j in range(width):
        parsed = [parse_time(r[j]) if j < len(r) else None for r in probe]
        if sum(p is not None for p in parsed) >= 0.9 * len(probe):  # a bad cell: named later
            found.append(j)
    if len(found) == 1:
        return found[0]
    if header is not None:
        named = [j for j in found if header[j].strip().lower() in _TIME_NAMES]
        if len(named) == 1:
            return named[0]
    if not found:
        msg = (
            "no column holds timestamps (ISO 8601, M/D/YYYY HH:MM:SS or Unix "
            "seconds): pass --time-column N (0-based)"
        )
    else:
        msg = f"columns {found} all look like timestamps: pass --time-column N (0-based)"
    raise PlantCsvError(msg)


def _find_current_columns(
    values: NDArray[np.float64], time_column: int, header: Sequence[str] | None
) -> tuple[int, int, int]:
    width = values.shape[1]
    if header is not None:
        names = [h.strip().lower() for h in header]
        for triple in _PHASE_NAMES:
            if all(n in names for n in triple):
                a, b, c = (names.index(n) for n in triple)
                return a, b, c
    finite = np.isfinite(values)
    seen = finite.sum(axis=0)
    # RMS phase currents are never negative: a column with negative values is something else.
    negative = np.where(finite, values < 0, False).sum(axis=0) > 0.01 * np.maximum(seen, 1)
    med = np.array(
        [np.median(values[finite[:, j], j]) if seen[j] else np.nan for j in range(width)]
    )
    med[negative] = np.nan
    cols = [j for j in range(width) if j != time_column]
    fits = []
    for i in range(len(cols) - 2):
        trio = cols[i : i + 3]
        m = med[trio]
        if np.all(np.isfinite(m)) and np.all(m > 0) and m.max() <= PHASE_RATIO * m.min():
            fits.append(tuple(trio))
    if len(fits) == 1:
        a, b, c = fits[0]
        return int(a), int(b), int(c)
    if not fits:
        msg = (
            "no three adjacent columns look like phase currents (never negative, similar "
            "level): "
            "pass --current-columns A,B,C (0-based)"
        )
    else:
        msg = (
            f"several column triples look like phase currents {fits}: pass --current-columns A,B,C"
        )
    raise PlantCsvError(msg)


def estimate_rate(stamps: NDArray[np.float64]) -> float:
    """Sampling rate of a column of timestamps: rows per second where several rows share a
    whole-second stamp, else 1 / the median step."""
    if len(stamps) < 2:
        msg = "fewer than two rows: cannot estimate the sampling rate; pass --rate-hz"
        raise PlantCsvError(msg)
    steps = np.diff(stamps)
    if np.median(steps) == 0.0:  # several rows per timestamp string
        starts = np.flatnonzero(np.r_[True, stamps[1:] != stamps[:-1]])
        runs = np.diff(np.r_[starts, len(stamps)])[1:-1]  # the first and last may be partial
        runs = runs if len(runs) else np.diff(np.r_[starts, len(stamps)])
        gap = np.median(np.diff(stamps[starts]))
        return float(np.median(runs) / max(gap, 1e-9))
    step = float(np.median(steps[steps > 0]))
    return 1.0 / step


def spread(stamps: NDArray[np.float64], rate_hz: float) -> NDArray[np.float64]:
    """Row j of a run of rows sharing one timestamp gets stamp + j / rate_hz (a run longer
    than the rate then reaches the next stamp: `read_plant_csv` refuses it)."""
    n = len(stamps)
    starts = np.flatnonzero(np.r_[True, stamps[1:] != stamps[:-1]])
    lengths = np.diff(np.r_[starts, n])
    j = np.arange(n) - np.repeat(starts, lengths)
    return stamps + j / rate_hz


def read_plant_csv(
    path: str | Path,
    *,
    current_columns: Sequence[int] | None = None,
    time_column: int | None = None,
    rate_hz: float | None = None,
) -> PlantCurrent:
    """Read a historian export of the three phase currents.

    Args:
        path: the CSV file (comma, semicolon or tab separated; UTF-8 or GB18030).
        current_columns: 0-based columns of phases A, B, C (default: a header's A/B/C-like
            names, else the one run of three adjacent columns with positive medians within
            PHASE_RATIO of each other).
        time_column: 0-based timestamp column (default: the one column whose cells all parse
            as timestamps).
        rate_hz: the sampling rate (default: estimated from the timestamps).

    Raises:
        PlantCsvError: an ambiguous layout, unreadable rows or timestamps, timestamps that go
            backwards, or too few rows; the message names the row and the option to pass.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path} does not exist or is not a file"
        raise PlantCsvError(msg)
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    rows = _sniff_rows(path, raw)
    if not rows:
        msg = f"{path} holds no rows"
        raise PlantCsvError(msg)
    header = rows[0] if _has_header(rows[0]) else None
    body = rows[1:] if header is not None else rows
    first_line = 2 if header is not None else 1
    if len(body) < MIN_ROWS:
        msg = f"{path}: {len(body)} data rows; need at least {MIN_ROWS}"
        raise PlantCsvError(msg)
    width = len(body[0])
    for i, r in enumerate(body):
        if len(r) != width:
            msg = (
                f"{path} line {i + first_line}: {len(r)} columns where the first data row has "
                f"{width}: fix or cut the file"
            )
            raise PlantCsvError(msg)
    if time_column is None:
        time_column = _find_time_column(body, header)
    elif not 0 <= time_column < width:
        msg = f"--time-column {time_column} outside the file's {width} columns (0-based)"
        raise PlantCsvError(msg)
    stamps = np.empty(len(body))
    fmt = ""
    for i, r in enumerate(body):
        got = parse_time(r[time_column])
        if got is None:
            msg = (
                f"{path} line {i + first_line}: timestamp {r[time_column]!r} in column "
                f"{time_column} is not ISO 8601, M/D/YYYY HH:MM:SS or Unix seconds"
            )
            raise PlantCsvError(msg)
        stamps[i], f = got
        if fmt and f != fmt:
            msg = f"{path} line {i + first_line}: timestamp format {f} after {fmt} rows"
            raise PlantCsvError(msg)
        fmt = f
    back = np.flatnonzero(np.diff(stamps) < 0)
    if back.size:
        i = int(back[0]) + 1
        msg = (
            f"{path} line {i + first_line}: timestamp {body[i][time_column]!r} is earlier than "
            f"the row before: sort the export by time"
        )
        raise PlantCsvError(msg)
    values = np.full((len(body), width), np.nan)
    for j in range(width):
        if j == time_column:
            continue
        for i, r in enumerate(body):
            c = r[j]
            if _is_number(c):
                values[i, j] = float(c)
            elif not _is_missing(c) and j in (current_columns or range(width)):
                values[i, j] = np.nan  # text in a column: not a phase candidate
                if current_columns is not None:
                    msg = f"{path} line {i + first_line} column {j}: {c!r} is not a number"
                    raise PlantCsvError(msg)
    if current_columns is None:
        cols = _find_current_columns(values, time_column, header)
    else:
        cols_list = [int(c) for c in current_columns]
        if len(cols_list) != 3 or any(not 0 <= c < width or c == time_column for c in cols_list):
            msg = (
                f"--current-columns {','.join(map(str, cols_list))}: give three distinct data "
                f"columns of the file's {width} (0-based, not the time column {time_column})"
            )
            raise PlantCsvError(msg)
        cols = (cols_list[0], cols_list[1], cols_list[2])
    if len(set(cols)) != 3:
        msg = f"--current-columns {cols}: three distinct columns"
        raise PlantCsvError(msg)
    if rate_hz is None:
        rate_hz = estimate_rate(stamps)
    if not (math.isfinite(rate_hz) and 0.01 <= rate_hz <= 1000.0):
        msg = f"sampling rate {rate_hz:g} Hz is implausible: pass --rate-hz"
        raise PlantCsvError(msg)
    t = spread(stamps, float(rate_hz))
    if np.any(np.diff(t) <= 0):
        i = int(np.flatnonzero(np.diff(t) <= 0)[0]) + 1
        msg = (
            f"{path} line {i + first_line}: more rows share a timestamp than the rate "
            f"{rate_hz:g} Hz allows: pass the right --rate-hz"
        )
        raise PlantCsvError(msg)
    current = values[:, list(cols)].astype(np.float32)
    period = 1.0 / rate_hz
    hole = np.flatnonzero(np.diff(t) > 3.0 * period)
    gaps = [(float(t[i]), float(t[i + 1])) for i in hole]
    return PlantCurrent(
        path, t, current, float(rate_hz), int(time_column), cols, header, fmt, digest, gaps
    )


def write_fmf(pc: PlantCurrent, out_dir: str | Path, *, name: str | None = None) -> Path:
    """Write one plant export as a current-only recording of the FMF-Benchmark V2 layout.

    `videos/NAME.mat` holds no frames (the plant export has no camera), `timestamps/NAME.csv`
    only its header, `currents/NAME.csv` one row per sample (whole-second timestamps in UTC,
    as the benchmark writes them: `read_fmf` spreads the rows of a second again), and
    `import.json` at the dataset root records the source (file, sha256, rows, columns).
    No `sentinel/` extension: the recording is unlabelled.

    Returns:
        The `pixel-level/` folder.

    Raises:
        ValueError: `out_dir` already holds a recording of that name.
    """
    import json

    import h5py

    from training.data.fmf import LAYOUT
    from training.data.fmf_write import _matlab_header, _write_csv

    name = name or re.sub(r"[^A-Za-z0-9_-]+", "-", pc.path.stem).strip("-") or "plant"
    root = Path(out_dir) / LAYOUT
    for sub in ("videos", "currents", "timestamps"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    mat = root / "videos" / f"{name}.mat"
    if mat.exists():
        msg = f"{mat} exists: give another --out or --name"
        raise ValueError(msg)
    t0 = float(np.floor(pc.t[0]))
    _write_csv(root / "currents" / f"{name}.csv", t0, pc.t - t0, pc.current)
    (root / "timestamps" / f"{name}.csv").write_text("timestamp\n")  # no camera
    with h5py.File(mat, "w", userblock_size=512) as f:
        for key, shape in (("data", (0, 3, 64, 64)), ("label", (0, 64, 64))):
            ds = f.create_dataset(key, shape=shape, dtype=np.uint8)
            ds.attrs.create("MATLAB_class", np.bytes_("uint8"))
    with open(mat, "r+b") as fh:
        fh.write(_matlab_header(t0))
    for split in ("train", "test"):
        path = root / f"{split}.json"
        if not path.exists():
            path.write_text("{}\n")
    info_path = Path(out_dir) / "import.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"recordings": {}}
    info["recordings"][name] = pc.summary()
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return root
