"""Bundle signing: Ed25519 over the exact bytes of `manifest.json`, written to
`signature.json` beside it (docs/export.md "Signing"). `service/signing.py` reads and checks
the same format (training never imports service/; tests/contract/ checks they agree).

Keys: `generate_key_pair` writes a PKCS#8 PEM private key (mode 0600) and a one-line public
key (base64 of the 32 raw bytes) that the service trusts through FURNACE_TRUSTED_KEYS or
FURNACE_TRUSTED_KEYS_FILE. Ed25519 signatures are deterministic, so signing the same manifest
with the same key always gives the same `signature.json` (`make model` reproduces it).
No torch here: `furnace calibrate-alerts` and `furnace sign` use it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SIGNATURE_FILE = "signature.json"
ALGORITHM = "ed25519"


def key_id(raw_public: bytes) -> str:
    """First 16 hex of sha256 over the 32 raw public-key bytes (as service.signing.key_id)."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PrivateKey) -> str:
    """The public key's text form: base64 of its 32 raw bytes (what the service trusts)."""
    return base64.b64encode(_raw_public(key)).decode("ascii")


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file (unencrypted PKCS#8, as `furnace keygen` writes).

    Raises:
        ValueError: unreadable, not PEM, or not an Ed25519 key.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        msg = f"cannot read the signing key {path}: {exc}"
        raise ValueError(msg) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        msg = f"{path}: not an unencrypted PEM private key ({exc})"
        raise ValueError(msg) from exc
    if not isinstance(key, Ed25519PrivateKey):
        msg = f"{path}: a {type(key).__name__}, expected an Ed25519 key (furnace keygen)"
        raise ValueError(msg)
    return key


def generate_key_pair(prefix: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write `{prefix}.key` (private, PEM, mode 0600) and `{prefix}.pub` (public, one line).

    Returns:
        (private key path, public key path).

    Raises:
        ValueError: a file exists and `overwrite` is off.
    """
    private, public = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    if not overwrite and (private.exists() or public.exists()):
        msg = f"{private} or {public} exists; remove it first (or pass --force)"
        raise ValueError(msg)
    private.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_text(public_key_text(key) + "\n")
    return private, public


def sign_manifest(folder: Path, key: Ed25519PrivateKey) -> Path:
    """Sign `folder/manifest.json` as it is on disk; writes `folder/signature.json`.

    Returns:
        The signature file's path.
    """
    data = (folder / "manifest.json").read_bytes()
    record = {
        "algorithm": ALGORITHM,
        "key_id": key_id(_raw_public(key)),
        "signature": base64.b64encode(key.sign(data)).decode("ascii"),
    }
    path = folder / SIGNATURE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return path


def is_signed(folder: Path) -> bool:
    return (folder / SIGNATURE_FILE).is_file()


def drop_signature(folder: Path) -> None:
    """Remove a signature that no longer matches (the manifest was rewritten unsigned)."""
    (folder / SIGNATURE_FILE).unlink(missing_ok=True)
