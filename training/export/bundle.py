"""Writing a bundle's manifest: hashes of every file, model version stamped into the graphs.

`service/bundle.py` owns the format (reader + verifier); training never imports service/, so
the two constants below are repeated there, and tests/contract/ checks that a bundle written
here is accepted there (docs/design/style.md 1).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import onnx

BUNDLE_FORMAT = "furnace-sentinel-bundle"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: Path, manifest: dict[str, Any], *, graphs: list[str]) -> Path:
    """Stamp the model version into each graph, hash every file, write `manifest.json`.

    The model version is `{name}-{YYYYMMDD}-{first 8 hex of the graphs' combined sha256}`,
    so two exports of the same weights get the same suffix.
    """
    combined = hashlib.sha256()
    for name in sorted(graphs):
        combined.update(sha256_file(folder / name).encode())
    day = manifest["created_at"][:10].replace("-", "")
    version = f"{manifest['name']}-{day}-{combined.hexdigest()[:8]}"
    for name in graphs:
        stamp_metadata(
            folder / name,
            {
                "model_version": version,
                "bundle_format": f"{BUNDLE_FORMAT}/{FORMAT_VERSION}",
                "modality": name.removesuffix(".onnx"),
            },
        )
    files = sorted({*graphs, manifest["golden"]})
    out = {**manifest, "model_version": version}
    out["files"] = {name: sha256_file(folder / name) for name in files}
    path = folder / "manifest.json"
    path.write_text(
        json.dumps(_finite(out), indent=2, allow_nan=False, default=_json_default) + "\n"
    )
    return path


def stamp_metadata(path: Path, meta: dict[str, str]) -> None:
    """Put `meta` into the graph's metadata_props (ORT: get_modelmeta().custom_metadata_map)."""
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    msg = f"not JSON serialisable: {type(obj).__name__}"
    raise TypeError(msg)


def _finite(obj: Any) -> Any:
    """NaN/Inf -> None, recursively, so the manifest is strict JSON."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
