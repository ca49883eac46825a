"""Writing a bundle's manifest: hashes of every file, model version stamped into the graphs.

`service/bundle.py` owns the format (reader + verifier); training never imports service/, so
the two constants below are repeated there, and tests/contract/ checks that a bundle written
here is accepted there (docs/design/style.md 1). Nothing here imports torch, and onnx only
when a graph is stamped, so torch-free code (`furnace calibrate-alerts`) can rewrite a
manifest with `rewrite_manifest`. Given a signing key, both sign the manifest they write
(training/export/signing.py); a signed bundle is never left with a stale signature.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.export.signing import drop_signature, is_signed, sign_manifest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

BUNDLE_FORMAT = "furnace-sentinel-bundle"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(
    folder: Path,
    manifest: dict[str, Any],
    *,
    graphs: list[str],
    signing_key: Ed25519PrivateKey | None = None,
) -> Path:
    """Stamp the model version into each graph, hash every file, write `manifest.json`, and
    sign it with `signing_key` (`signature.json`; without a key the bundle is unsigned and
    any older signature is removed).

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
    return _write(folder, out, signing_key)


def rewrite_manifest(
    folder: Path, manifest: dict[str, Any], *, signing_key: Ed25519PrivateKey | None = None
) -> Path:
    """Write a changed manifest for an existing bundle (a recalibrated alert policy and
    thresholds): graphs, golden file and `model_version` stay as they are (the weights did
    not change), so nothing is re-stamped. Every file in `manifest["files"]` must still match
    its sha256, so a rewrite never blesses a changed graph. The new manifest is signed with
    `signing_key`; a signed bundle cannot be rewritten without one (its signature would no
    longer match and the service would refuse it).

    Raises:
        ValueError: a listed file is missing or its sha256 differs from the manifest's, or
            the bundle is signed and no signing key was given.
    """
    for name, expected in sorted(manifest["files"].items()):
        path = folder / name
        if not path.is_file() or sha256_file(path) != expected:
            msg = f"{path}: missing or changed since export; re-export the bundle"
            raise ValueError(msg)
    if signing_key is None and is_signed(folder):
        msg = f"{folder} is signed: give the signing key (--signing-key or FURNACE_SIGNING_KEY) "
        msg += "so the rewritten manifest is signed again"
        raise ValueError(msg)
    return _write(folder, manifest, signing_key)


def _write(folder: Path, manifest: dict[str, Any], signing_key: Ed25519PrivateKey | None) -> Path:
    path = folder / "manifest.json"
    text = json.dumps(_finite(manifest), indent=2, allow_nan=False, default=_json_default)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)  # a reader never sees half a manifest
    if signing_key is None:
        drop_signature(folder)
    else:
        sign_manifest(folder, signing_key)
    return path


def stamp_metadata(path: Path, meta: dict[str, str]) -> None:
    """Put `meta` into the graph's metadata_props (ORT: get_modelmeta().custom_metadata_map)."""
    import onnx

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
