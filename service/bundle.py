"""The model bundle format: reader and verifier (docs/design/architecture.md "Model bundle",
docs/design/serving.md 5.5).

A bundle is a folder with `manifest.json`, one ONNX graph per modality and `golden.npz`
(inputs and reference outputs for a warm-up check). `verify_bundle` parses and validates the
manifest, checks that every listed file is a plain name inside the folder, that none is
missing, that no unlisted `.onnx` lies beside them, and that every sha256 matches. Any failure
raises `BundleError` naming the file and the reason; nothing here touches ONNX Runtime.
Given a `BundleTrust`, it first checks the Ed25519 signature over the manifest's bytes
(service/signing.py), so a graph changed and re-hashed into the manifest is refused too.
`training/export/bundle.py` writes this format.

An optional `memory` section adds one memory-head graph per modality (`MemorySpec`; codes of
the decided window and of earlier windows of the same furnace -> probabilities, docs/service.md
"Memory"); its graphs are listed and hashed in `files` like the window graphs. An optional
`adaptation` section turns on per-furnace score adaptation (`service.adaptation.AdaptationSpec`,
docs/service.md "Per-furnace adaptation").
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from service.adaptation import MAX_WINDOW_SECONDS, AdaptationSpec
from service.signing import BundleTrust, SignatureError, check_signature
from service.types import MODALITIES, WindowSpec

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "furnace-sentinel-bundle"
SUPPORTED_VERSIONS = (1,)
INPUT_NAMES = {"current": ("current_a", "baseline_a"), "camera": ("frames",)}
OUTPUT_NAMES = ("codes", "quantized", "probs", "score", "segment_scores")
# "decide": the memory head's probabilities and score replace the window graph's (detection and
# naming); "name": they replace the probabilities only (the condition), the window graph's
# score still decides whether a window is abnormal (docs/export.md, "Memory heads").
MEMORY_ROLES = ("decide", "name")
MEMORY_INPUTS = (
    ("codes", "tensor(int64)"),
    ("present", "tensor(float)"),
    ("window_probs", "tensor(float)"),
)
MEMORY_OUTPUTS = ("probs", "score")
MAX_MEMORY_SLOTS = 1024
MAX_MEMORY_STRIDE = 100_000
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BundleError(ValueError):
    """A bundle that must not be served; the message says which file and why."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    type: str  # ONNX Runtime's type string, e.g. "tensor(float)"
    shape: tuple[int | None, ...]  # None: the dynamic batch axis


@dataclass(frozen=True)
class GraphSpec:
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def memory_input_shapes(
    slots: int, codes_per_window: int, n_classes: int
) -> dict[str, tuple[int, ...]]:
    """Each memory-graph input's dimensions after the batch, by name (MEMORY_INPUTS)."""
    return {
        "codes": (slots, codes_per_window),
        "present": (slots,),
        "window_probs": (n_classes,),
    }


@dataclass(frozen=True)
class MemorySpec:
    """The manifest's optional `memory` section: per modality a graph reading the codes of
    `slots` windows of one furnace, slot j the window ending j * stride_windows * hop_seconds
    before the decided one (slot 0: the decided window itself), `codes_per_window` codes each.
    """

    slots: int  # M
    stride_windows: int
    hop_seconds: float  # the window spec's hop
    codes_per_window: int  # segments x codes_per_segment
    graphs: dict[str, GraphSpec]  # modality -> its memory graph
    heads: dict[str, str]  # modality -> the label source of its head (information only)
    role: str = "decide"  # MEMORY_ROLES: what the memory heads' probabilities are used for

    def input_shapes(self, n_classes: int) -> dict[str, tuple[int, ...]]:
        """Each memory-graph input's dimensions after the batch."""
        return memory_input_shapes(self.slots, self.codes_per_window, n_classes)

    @property
    def span_seconds(self) -> float:
        """The window ends the slots cover, the decided one's included, plus one stride."""
        return self.slots * self.stride_windows * self.hop_seconds


FUSION_RULES = ("max_ratio", "average")
RATIO_FLOOR = 1e-6  # a modality threshold below this is floored before dividing by it
MAX_RATIO_THRESHOLD = 1e6


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds, each at `target_far` false alarms on validation normals.

    `current` and `camera` are on score = 1 - p(normal). `fusion` says what `fused` is:
    "max_ratio" (format 1 bundles exported since the fusion change): each modality's score
    divided by its own threshold, the larger ratio against `fused`; "average" (older
    bundles): 1 - p(normal) of the averaged probabilities against `fused`.

    `current_alone` and `camera_alone` (max_ratio only; manifest keys of the same names,
    1.0 when absent) are the ratio thresholds when only that modality decides (the other
    one unhealthy): its score / its `current` or `camera` threshold against `*_alone`, i.e.
    its score against `current * current_alone`. The alert calibration sets them so that the
    fault-time threshold of a modality can rise without changing its ratio inside the
    two-modality max-ratio rule. Under "average" fusion `current` and `camera` are only ever
    used alone anyway, so the `*_alone` values stay 1.0 there (the reader refuses others).
    """

    current: float
    camera: float
    fused: float
    target_far: float
    fusion: str = "average"
    current_alone: float = 1.0
    camera_alone: float = 1.0

    def for_modalities(self, used: tuple[str, ...]) -> float:
        """The threshold a decision by the modalities `used` is compared with."""
        if len(used) == 2:
            return self.fused
        if self.fusion == "max_ratio":  # one modality: its score ratio against its alone one
            return self.current_alone if used == ("current",) else self.camera_alone
        return self.current if used == ("current",) else self.camera

    def modality(self, name: str) -> float:
        """A single modality's threshold on 1 - p(normal)."""
        return self.current if name == "current" else self.camera


@dataclass(frozen=True)
class BundleAlertPolicy:
    """The alert policy calibrated with the bundle's thresholds (manifest `alert_policy`,
    written by `furnace export` / `furnace calibrate-alerts`): open an episode on `k` abnormal
    of the last `n` windows, close it after `m` clean ones. `target_false_episodes_per_hour`
    is what it was calibrated for (None: not recorded); the measured figures stay in `raw`.
    """

    k: int
    n: int
    m: int
    target_false_episodes_per_hour: float | None = None


@dataclass(frozen=True)
class Manifest:
    folder: Path
    name: str
    model_version: str
    format_version: int
    window: WindowSpec
    class_names: tuple[str, ...]
    codebook_size: int
    code_dim: int
    codes_per_segment: int  # product quantisation: a window has segments x this codes
    head: str  # the head's name, or current=NAME,camera=NAME when the graphs differ
    heads: dict[str, str]  # modality -> the head its graph carries
    graphs: dict[str, GraphSpec]
    golden: str
    thresholds: Thresholds
    code_usage: dict[str, tuple[float, ...]]
    files: dict[str, str]  # name -> sha256
    raw: dict[str, Any]  # the whole manifest, for GET /v1/model
    alert_policy: BundleAlertPolicy | None = None  # None: the manifest has none (older)
    signed_by: str | None = None  # id of the trusted key whose signature was checked
    memory: MemorySpec | None = None  # None: no memory heads (the window graphs decide)
    adaptation: AdaptationSpec | None = None  # None: scores are decided as the graphs give them

    @property
    def bundle_sha256(self) -> str:
        """One digest of the whole bundle (the manifest file's own sha256)."""
        return sha256_file(self.folder / "manifest.json")


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_manifest(folder: str | Path) -> Manifest:
    """Parse and validate `folder/manifest.json` (schema only; no file hashes).

    Raises:
        BundleError: missing or malformed manifest, unsupported format version, or a field
            with the wrong type or value.
    """
    root = Path(folder)
    return _parse_manifest(root, _manifest_bytes(root))


def _manifest_bytes(root: Path) -> bytes:
    path = root / "manifest.json"
    if not root.is_dir():
        msg = f"bundle folder {root} does not exist"
        raise BundleError(msg)
    if not path.is_file():
        msg = f"{path}: missing (a bundle needs manifest.json; export one with `furnace export`)"
        raise BundleError(msg)
    return path.read_bytes()


def _parse_manifest(root: Path, data: bytes) -> Manifest:
    path = root / "manifest.json"
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{path}: not valid JSON ({exc})"
        raise BundleError(msg) from exc
    if not isinstance(raw, dict):
        msg = f"{path}: the manifest must be a JSON object"
        raise BundleError(msg)
    where = f"{path}"
    if raw.get("format") != BUNDLE_FORMAT:
        msg = f"{where}: format is {raw.get('format')!r}, expected {BUNDLE_FORMAT!r}"
        raise BundleError(msg)
    version = raw.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        msg = f"{where}: format_version {version!r} is not supported (this service reads "
        msg += f"{', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade the service or re-export"
        raise BundleError(msg)
    window = _window(_obj(raw, "window", where), where)
    graphs = _graphs(_obj(raw, "graphs", where), where)
    width = graphs["current"].inputs[1].shape[-1]
    if width != window.baseline_width:
        msg = f"{where}: the current graph's baseline_a has {width} columns but the window "
        msg += f"spec needs {window.baseline_width} (long_baseline_seconds "
        msg += f"{window.long_baseline_seconds:g}); re-export the bundle"
        raise BundleError(msg)
    codes_per_segment = _int(raw, "codes_per_segment", where) if "codes_per_segment" in raw else 1
    class_names = _class_names(raw, where)
    return Manifest(
        folder=root,
        name=_str(raw, "name", where),
        model_version=_str(raw, "model_version", where),
        format_version=int(version),
        window=window,
        class_names=class_names,
        codebook_size=_int(raw, "codebook_size", where),
        code_dim=_int(raw, "code_dim", where),
        codes_per_segment=codes_per_segment,
        head=_str(raw, "head", where),
        heads=_heads(raw, where),
        graphs=graphs,
        golden=_file_name(_str(raw, "golden", where), where),
        thresholds=_thresholds(_obj(raw, "thresholds", where), where),
        code_usage=_usage(raw, where),
        files=_files(_obj(raw, "files", where), where),
        raw=raw,
        alert_policy=_alert_policy(raw, where),
        memory=_memory(
            raw,
            where,
            window,
            window.segments * codes_per_segment,
            graphs,
            len(class_names),
        ),
        adaptation=_adaptation(raw, where, window),
    )


def verify_bundle(folder: str | Path, *, trust: BundleTrust | None = None) -> Manifest:
    """`read_manifest` plus the file checks: listed, present, no extra graphs, hashes match.

    Args:
        folder: the bundle folder.
        trust: the service's trusted keys: the manifest's signature is checked first, over the
            very bytes that are then parsed. None (offline tools: scorecard, calibration on
            the operator's own files) checks no signature.

    Raises:
        BundleError: the bundle must not be served (the message says which file and why).
    """
    root = Path(folder)
    data = _manifest_bytes(root)
    signed_by = None
    if trust is not None:
        try:
            signed_by = check_signature(root, data, trust)
        except SignatureError as exc:
            if not trust.allow_unsigned:
                raise BundleError(str(exc)) from exc
            logger.warning("%s; served anyway: FURNACE_ALLOW_UNSIGNED_BUNDLES is on", exc)
    manifest = replace(_parse_manifest(root, data), signed_by=signed_by)
    needed = {g.file for g in manifest.graphs.values()} | {manifest.golden}
    if manifest.memory is not None:
        needed |= {g.file for g in manifest.memory.graphs.values()}
    unlisted = sorted(needed - set(manifest.files))
    if unlisted:
        msg = f"{root}/manifest.json: files {unlisted} are used but have no sha256 in 'files'"
        raise BundleError(msg)
    for name, expected in sorted(manifest.files.items()):
        path = root / name
        if not path.is_file():
            msg = f"{path}: listed in the manifest but missing"
            raise BundleError(msg)
        actual = sha256_file(path)
        if actual != expected:
            msg = (
                f"{path}: sha256 {actual[:12]}... does not match the manifest's {expected[:12]}..."
            )
            msg += " (the file was changed or corrupted after export)"
            raise BundleError(msg)
    extra = sorted(p.name for p in root.glob("*.onnx") if p.name not in manifest.files)
    if extra:
        msg = f"{root}: graphs {extra} are not listed in the manifest; remove them or re-export"
        raise BundleError(msg)
    return manifest


def _fail(where: str, key: str, what: str) -> BundleError:
    return BundleError(f"{where}: '{key}' {what}")


def _obj(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise _fail(where, key, "must be an object")
    return value


def _str(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise _fail(where, key, "must be a non-empty string")
    return value


def _int(raw: dict[str, Any], key: str, where: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(where, key, "must be a positive integer")
    return value


def _num(raw: dict[str, Any], key: str, where: str, lo: float, hi: float) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(where, key, "must be a finite number")
    if not lo <= float(value) <= hi:
        raise _fail(where, key, f"must lie in [{lo}, {hi}], got {value}")
    return float(value)


def _file_name(name: str, where: str) -> str:
    if not _PLAIN_NAME.match(name) or name in (".", ".."):
        msg = f"{where}: file name {name!r} must be a plain name inside the bundle folder"
        raise BundleError(msg)
    return name


def _window(raw: dict[str, Any], where: str) -> WindowSpec:
    w = f"{where} window"
    spec = WindowSpec(
        window_seconds=_num(raw, "window_seconds", w, 1e-3, 3600.0),
        segments=_int(raw, "segments", w),
        hop_seconds=_num(raw, "hop_seconds", w, 1e-3, 3600.0),
        rate_hz=_num(raw, "rate_hz", w, 1e-3, 1000.0),
        baseline_seconds=_num(raw, "baseline_seconds", w, 0.0, 86400.0),
        long_baseline_seconds=(
            _num(raw, "long_baseline_seconds", w, 0.0, 86400.0)
            if "long_baseline_seconds" in raw
            else 0.0
        ),
        frame_px=_int(raw, "frame_px", w),
        camera_fps=_num(raw, "camera_fps", w, 1e-3, 1000.0),
    )
    if abs(spec.samples_per_segment - spec.segment_seconds * spec.rate_hz) > 1e-9:
        raise _fail(w, "rate_hz", "times the segment length must be a whole number of samples")
    if 0.0 < spec.long_baseline_seconds < spec.baseline_seconds:
        raise _fail(w, "long_baseline_seconds", "must be 0 or at least baseline_seconds")
    return spec


def _class_names(raw: dict[str, Any], where: str) -> tuple[str, ...]:
    names = raw.get("class_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise _fail(where, "class_names", "must be a list of at least two strings")
    if names[0] != "normal":
        raise _fail(where, "class_names", f"must start with 'normal', got {names[0]!r}")
    return tuple(names)


def _tensor_specs(raw: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list):
        raise _fail(where, "inputs/outputs", "must be lists")
    out = []
    for item in raw:
        ok = isinstance(item, dict) and isinstance(item.get("name"), str)
        ok = ok and isinstance(item.get("type"), str) and isinstance(item.get("shape"), list)
        if not ok:
            raise _fail(where, "inputs/outputs", "entries need name, type and shape")
        shape = tuple(d if isinstance(d, int) else None for d in item["shape"])
        out.append(TensorSpec(item["name"], item["type"], shape))
    return tuple(out)


def _graph_spec(graphs: dict[str, Any], modality: str, where: str) -> GraphSpec:
    """One modality's entry of a `graphs` object: file, inputs, outputs."""
    g = graphs.get(modality)
    if not isinstance(g, dict):
        raise _fail(where, f"graphs.{modality}", "is missing")
    return GraphSpec(
        file=_file_name(_str(g, "file", where), where),
        inputs=_tensor_specs(g.get("inputs"), f"{where} graphs.{modality}"),
        outputs=_tensor_specs(g.get("outputs"), f"{where} graphs.{modality}"),
    )


def _graphs(raw: dict[str, Any], where: str) -> dict[str, GraphSpec]:
    graphs = {}
    for m in MODALITIES:
        spec = _graph_spec(raw, m, where)
        names = tuple(t.name for t in spec.inputs)
        if names != INPUT_NAMES[m]:
            raise _fail(where, f"graphs.{m}.inputs", f"must be {INPUT_NAMES[m]}, got {names}")
        outs = tuple(t.name for t in spec.outputs)
        if outs != OUTPUT_NAMES:
            raise _fail(where, f"graphs.{m}.outputs", f"must be {OUTPUT_NAMES}, got {outs}")
        graphs[m] = spec
    return graphs


def _adaptation(raw: dict[str, Any], where: str, window: WindowSpec) -> AdaptationSpec | None:
    """The optional `adaptation` section; None when the manifest has none."""
    if raw.get("adaptation") is None:
        return None
    section = _obj(raw, "adaptation", where)
    w = f"{where} adaptation"
    hop = _num(section, "hop_seconds", w, 1e-3, 3600.0)
    if abs(hop - window.hop_seconds) > 1e-9:
        raise _fail(w, "hop_seconds", f"must equal window.hop_seconds {window.hop_seconds:g}")
    seconds = _num(section, "window_seconds", w, hop, MAX_WINDOW_SECONDS)
    quantile = _num(section, "quantile", w, 0.0, 1.0)
    min_windows = _int(section, "min_windows", w)
    reference_raw = _obj(section, "reference", w)
    reference = {}
    for m in reference_raw:
        if m not in MODALITIES:
            raise _fail(w, "reference", f"has {m!r}; modalities are {MODALITIES}")
        reference[m] = _num(reference_raw, m, f"{w} reference", -20.0, 20.0)
    max_shift = _num(section, "max_shift_logits", w, 0.0, 40.0)
    return AdaptationSpec(seconds, quantile, min_windows, hop, reference, max_shift)


def _memory(
    raw: dict[str, Any],
    where: str,
    window: WindowSpec,
    codes_per_window: int,
    window_graphs: dict[str, GraphSpec],
    n_classes: int,
) -> MemorySpec | None:
    """The optional `memory` section (module docstring); None when the manifest has none."""
    if raw.get("memory") is None:
        return None
    section = _obj(raw, "memory", where)
    w = f"{where} memory"
    slots = _int(section, "slots", w)
    stride = _int(section, "stride_windows", w)
    if slots > MAX_MEMORY_SLOTS:
        raise _fail(w, "slots", f"must be at most {MAX_MEMORY_SLOTS}, got {slots}")
    if stride > MAX_MEMORY_STRIDE:
        raise _fail(w, "stride_windows", f"must be at most {MAX_MEMORY_STRIDE}, got {stride}")
    hop = _num(section, "hop_seconds", w, 1e-3, 3600.0)
    if abs(hop - window.hop_seconds) > 1e-9:
        raise _fail(w, "hop_seconds", f"must equal window.hop_seconds {window.hop_seconds:g}")
    width = _int(section, "codes_per_window", w)
    if width != codes_per_window:
        msg = f"must be segments x codes_per_segment = {codes_per_window}, got {width}"
        raise _fail(w, "codes_per_window", msg)
    for m, window_graph in window_graphs.items():
        out = next(t for t in window_graph.outputs if t.name == "codes")
        if out.shape[-1:] not in ((None,), (width,)):
            msg = f"is {width}, but the {m} graph's codes output has shape {list(out.shape)}"
            raise _fail(w, "codes_per_window", msg)
    graphs_raw = _obj(section, "graphs", w)
    graphs: dict[str, GraphSpec] = {}
    used = {g.file for g in window_graphs.values()}
    for m in MODALITIES:
        spec = _graph_spec(graphs_raw, m, w)
        ins = tuple((t.name, t.type) for t in spec.inputs)
        if ins != MEMORY_INPUTS:
            raise _fail(w, f"graphs.{m}.inputs", f"must be {MEMORY_INPUTS}, got {ins}")
        outs = tuple(t.name for t in spec.outputs)
        if outs != MEMORY_OUTPUTS:
            raise _fail(w, f"graphs.{m}.outputs", f"must be {MEMORY_OUTPUTS}, got {outs}")
        shapes = memory_input_shapes(slots, width, n_classes)
        for t in spec.inputs:
            want = shapes[t.name]
            if not shape_fits(t.shape, want):
                msg = f"{t.name} has shape {list(t.shape)}, but slots {slots}, codes_per_window "
                msg += f"{width} and {n_classes} classes need [null, {', '.join(map(str, want))}]"
                raise _fail(w, f"graphs.{m}.inputs", msg)
        if spec.file in used:
            raise _fail(w, f"graphs.{m}.file", f"{spec.file!r} is already another graph's file")
        used.add(spec.file)
        graphs[m] = spec
    heads_raw = section.get("heads") or {}
    if not isinstance(heads_raw, dict):
        raise _fail(w, "heads", "must be an object")
    heads = {str(k): str(v) for k, v in heads_raw.items()}
    role = section.get("role", "decide")
    if role not in MEMORY_ROLES:
        raise _fail(w, "role", f"must be one of {MEMORY_ROLES}, got {role!r}")
    return MemorySpec(slots, stride, hop, width, graphs, heads, role)


def shape_fits(shape: tuple[int | None, ...], want: tuple[int, ...]) -> bool:
    """A (batch, *want) input: the right rank, every fixed dimension as wanted."""
    if len(shape) != len(want) + 1:
        return False
    return all(got is None or got == dim for got, dim in zip(shape[1:], want, strict=True))


def _thresholds(raw: dict[str, Any], where: str) -> Thresholds:
    w = f"{where} thresholds"
    fusion = raw.get("fusion", "average")
    if fusion not in FUSION_RULES:
        raise _fail(w, "fusion", f"must be one of {FUSION_RULES}, got {fusion!r}")
    fused_hi = MAX_RATIO_THRESHOLD if fusion == "max_ratio" else 1.0
    alone = {}
    for key in ("current_alone", "camera_alone"):
        alone[key] = _num(raw, key, w, 0.0, MAX_RATIO_THRESHOLD) if key in raw else 1.0
        if fusion != "max_ratio" and alone[key] != 1.0:
            raise _fail(w, key, f"applies to fusion 'max_ratio' only (this one is {fusion!r})")
    return Thresholds(
        current=_num(raw, "current", w, 0.0, 1.0),
        camera=_num(raw, "camera", w, 0.0, 1.0),
        fused=_num(raw, "fused", w, 0.0, fused_hi),
        target_far=_num(raw, "target_far", w, 0.0, 1.0),
        fusion=fusion,
        current_alone=alone["current_alone"],
        camera_alone=alone["camera_alone"],
    )


def _heads(raw: dict[str, Any], where: str) -> dict[str, str]:
    """The head each modality's graph carries; bundles exported before per-modality heads
    have one `head` for both.
    """
    if "heads" not in raw:
        return dict.fromkeys(MODALITIES, _str(raw, "head", where))
    heads = _obj(raw, "heads", where)
    return {m: _str(heads, m, f"{where} heads") for m in MODALITIES}


def _alert_policy(raw: dict[str, Any], where: str) -> BundleAlertPolicy | None:
    """The optional `alert_policy` object (absent in bundles exported before it existed)."""
    if raw.get("alert_policy") is None:
        return None
    w = f"{where} alert_policy"
    policy = _obj(raw, "alert_policy", where)
    k, n, m = (_int(policy, key, w) for key in ("k", "n", "m"))
    if k > n:
        raise _fail(w, "k", f"must be <= n, got k={k} n={n}")
    target = None
    if policy.get("target_false_episodes_per_hour") is not None:
        target = _num(policy, "target_false_episodes_per_hour", w, 0.0, 3600.0)
    return BundleAlertPolicy(k=k, n=n, m=m, target_false_episodes_per_hour=target)


def _usage(raw: dict[str, Any], where: str) -> dict[str, tuple[float, ...]]:
    usage = _obj(raw, "code_usage", where)
    out = {}
    for m in MODALITIES:
        hist = usage.get(m)
        if not isinstance(hist, list) or len(hist) != raw.get("codebook_size"):
            raise _fail(where, f"code_usage.{m}", "must list one fraction per code")
        out[m] = tuple(float(v) for v in hist)
    return out


def _files(raw: dict[str, Any], where: str) -> dict[str, str]:
    out = {}
    for name, digest in raw.items():
        _file_name(name, where)
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise _fail(where, f"files.{name}", "must be a sha256 hex digest")
        out[name] = digest
    return out
