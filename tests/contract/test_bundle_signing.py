"""Bundle signatures (issue 14 item 5): training signs the manifest (training/export/signing.py),
the service checks it against its trusted keys (service/signing.py) before it trusts the
manifest's hashes, so a graph changed and re-hashed into the manifest is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.bundle import BundleError, verify_bundle
from service.signing import BundleTrust, parse_public_key
from training.export.bundle import rewrite_manifest, sha256_file
from training.export.signing import (
    generate_key_pair,
    key_id,
    load_signing_key,
    public_key_text,
    sign_manifest,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "models" / "default"
DEV_PUB = REPO / "keys" / "dev-bundle.pub"
DEV_KEY = REPO / "keys" / "dev-bundle.key"


def dev_trust(*, allow_unsigned: bool = False) -> BundleTrust:
    lines = [x for x in DEV_PUB.read_text().splitlines() if x and not x.startswith("#")]
    return BundleTrust.from_texts(lines, allow_unsigned=allow_unsigned)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    dest = tmp_path / "bundle"
    shutil.copytree(DEFAULT, dest)
    return dest


def _flip_and_rehash(folder: Path, name: str = "current.onnx") -> None:
    """The attack of the issue: change a graph, then write its new sha256 into the manifest."""
    path = folder / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    manifest = folder / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["files"][name] = sha256_file(path)
    manifest.write_text(json.dumps(raw, indent=2))


@pytest.mark.fault(
    "a byte of current.onnx flipped and its new sha256 written into the manifest",
    expected="the bundle is refused: the manifest no longer matches its Ed25519 signature",
)
def test_a_changed_and_rehashed_graph_is_refused(bundle: Path) -> None:
    _flip_and_rehash(bundle)
    verify_bundle(bundle)  # the hashes alone no longer catch it
    with pytest.raises(BundleError, match="does not match manifest.json"):
        verify_bundle(bundle, trust=dev_trust())


def test_the_shipped_bundle_is_signed_with_the_development_key() -> None:
    manifest = verify_bundle(DEFAULT, trust=dev_trust())
    assert manifest.signed_by == parse_public_key(DEV_PUB.read_text().splitlines()[-1])[0]


@pytest.mark.fault(
    "an unsigned bundle (signature.json removed)",
    expected="refused unless FURNACE_ALLOW_UNSIGNED_BUNDLES=true, which serves it with a warning",
)
def test_an_unsigned_bundle_is_refused_unless_allowed(bundle: Path) -> None:
    (bundle / "signature.json").unlink()
    with pytest.raises(BundleError, match="unsigned bundle"):
        verify_bundle(bundle, trust=dev_trust())
    assert verify_bundle(bundle, trust=dev_trust(allow_unsigned=True)).signed_by is None


@pytest.mark.fault(
    "a bundle signed with a key the service does not trust",
    expected="refused, naming the signing key and the trusted ones",
)
def test_a_bundle_signed_by_an_untrusted_key_is_refused(bundle: Path, tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path / "other")
    sign_manifest(bundle, load_signing_key(private))
    with pytest.raises(BundleError, match="not trusted"):
        verify_bundle(bundle, trust=dev_trust())
    other = BundleTrust.from_texts([public.read_text()])
    assert verify_bundle(bundle, trust=other).signed_by == parse_public_key(public.read_text())[0]


@pytest.mark.fault(
    "no trusted bundle keys configured",
    expected="every bundle is refused",
)
def test_no_trusted_keys_refuses_every_bundle() -> None:
    with pytest.raises(BundleError, match="no trusted bundle keys"):
        verify_bundle(DEFAULT, trust=BundleTrust())


def test_rewriting_a_signed_manifest_needs_the_key_and_re_signs(bundle: Path) -> None:
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["alert_policy"] = None
    with pytest.raises(ValueError, match="is signed"):
        rewrite_manifest(bundle, raw)
    rewrite_manifest(bundle, raw, signing_key=load_signing_key(DEV_KEY))
    assert verify_bundle(bundle, trust=dev_trust()).alert_policy is None


def test_training_and_service_agree_on_keys_and_signatures(tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path / "k")
    key = load_signing_key(private)
    kid, _ = parse_public_key(public_key_text(key))
    assert kid == key_id(_raw(public.read_text()))
    assert (private.stat().st_mode & 0o777) == 0o600
    with pytest.raises(ValueError, match="exists"):
        generate_key_pair(tmp_path / "k")


def test_signatures_are_deterministic(bundle: Path) -> None:
    """Ed25519 is deterministic: `make model` re-signs models/default byte for byte."""
    before = (bundle / "signature.json").read_bytes()
    sign_manifest(bundle, load_signing_key(DEV_KEY))
    assert (bundle / "signature.json").read_bytes() == before


@pytest.mark.fault(
    "a malformed key in FURNACE_TRUSTED_KEYS",
    expected="the service refuses to start, naming the setting",
)
def test_a_malformed_trusted_key_stops_the_settings() -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="not base64|Ed25519"):
        Settings(auth_disabled=True, trusted_keys="not-a-key!")
    with pytest.raises(ValidationError, match="32"):
        Settings(auth_disabled=True, trusted_keys="AAAA")


def _raw(text: str) -> bytes:
    import base64

    return base64.b64decode(text.strip())
