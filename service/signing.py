"""Bundle signatures: an Ed25519 signature over the exact bytes of `manifest.json`
(docs/export.md "Signing"; issue 14 item 5).

The manifest lists the sha256 of every file of the bundle, so a valid signature over it
vouches for the graphs and the golden windows too: a changed graph whose new hash was written
into the manifest no longer matches the signature. The signature lies beside the manifest in
`signature.json` (`algorithm`, `key_id`, `signature` in base64). Public keys are the 32 raw
Ed25519 bytes in base64 (one line, `furnace keygen` writes them); a key's id is the first 16
hex of their sha256. `training/export/signing.py` writes this format (training never imports
service/), and tests/contract/ checks that the two agree.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_FILE: Final = "signature.json"
ALGORITHM: Final = "ed25519"
_KEY_PREFIX: Final = "ed25519:"


class SignatureError(ValueError):
    """A bundle whose signature is missing, malformed, by an untrusted key, or wrong."""


def key_id(raw: bytes) -> str:
    """The id of a public key: the first 16 hex digits of sha256 over its 32 raw bytes."""
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_public_key(text: str) -> tuple[str, Ed25519PublicKey]:
    """One public key from its text form: base64 of the 32 raw bytes (an `ed25519:` prefix
    is allowed).

    Returns:
        (key id, key).

    Raises:
        ValueError: not base64 of 32 bytes.
    """
    body = text.strip().removeprefix(_KEY_PREFIX)
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        msg = f"trusted key {body[:12]!r}... is not base64 ({exc})"
        raise ValueError(msg) from exc
    if len(raw) != 32:
        msg = f"trusted key {body[:12]!r}... has {len(raw)} bytes; an Ed25519 public key has 32"
        raise ValueError(msg)
    return key_id(raw), Ed25519PublicKey.from_public_bytes(raw)


def read_key_file(path: Path) -> list[str]:
    """The keys of a trusted-keys file: one per line, blank lines and `#` comments skipped.

    Raises:
        ValueError: the file cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read the trusted keys file {path}: {exc}"
        raise ValueError(msg) from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@dataclass(frozen=True)
class BundleTrust:
    """Which bundles the service serves: signed by one of `keys` (id -> key), or any bundle
    when `allow_unsigned` (a development setting: a missing or failing signature is logged,
    not refused)."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    allow_unsigned: bool = False

    @classmethod
    def from_texts(cls, texts: list[str], *, allow_unsigned: bool = False) -> BundleTrust:
        """Raises ValueError for a malformed key."""
        return cls(dict(parse_public_key(t) for t in texts), allow_unsigned)


def check_signature(folder: Path, manifest_bytes: bytes, trust: BundleTrust) -> str:
    """Check `folder/signature.json` against the manifest bytes and the trusted keys.

    Args:
        folder: the bundle folder.
        manifest_bytes: the exact bytes of manifest.json that will be parsed and served.
        trust: the trusted keys.

    Returns:
        The id of the key that signed the manifest.

    Raises:
        SignatureError: no signature, a malformed one, a key not trusted, or a signature that
            does not match the manifest (changed after signing).
    """
    path = folder / SIGNATURE_FILE
    if not trust.keys:
        msg = f"{folder}: no trusted bundle keys are configured: set FURNACE_TRUSTED_KEYS or "
        msg += "FURNACE_TRUSTED_KEYS_FILE (the shipped models/default is signed with the "
        msg += "development key keys/dev-bundle.pub), or FURNACE_ALLOW_UNSIGNED_BUNDLES=true "
        msg += "in development"
        raise SignatureError(msg)
    if not path.is_file():
        msg = f"{folder}: unsigned bundle (no {SIGNATURE_FILE}); sign it with `furnace sign "
        msg += "--bundle DIR --signing-key KEY` (docs/export.md)"
        raise SignatureError(msg)
    try:
        sig = json.loads(path.read_text(encoding="utf-8"))
        algorithm, kid = sig["algorithm"], sig["key_id"]
        signature = base64.b64decode(sig["signature"], validate=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        msg = f"{path}: malformed signature file ({type(exc).__name__}: {exc})"
        raise SignatureError(msg) from exc
    if algorithm != ALGORITHM:
        msg = f"{path}: algorithm {algorithm!r} is not supported (expected {ALGORITHM!r})"
        raise SignatureError(msg)
    key = trust.keys.get(str(kid))
    if key is None:
        trusted = ", ".join(sorted(trust.keys)) or "none configured"
        msg = f"{path}: signed by key {kid}, which is not trusted (trusted: {trusted}; "
        msg += "FURNACE_TRUSTED_KEYS / FURNACE_TRUSTED_KEYS_FILE)"
        raise SignatureError(msg)
    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature as exc:
        msg = f"{path}: the signature by key {kid} does not match manifest.json (the bundle "
        msg += "was changed after it was signed)"
        raise SignatureError(msg) from exc
    return str(kid)
