"""The service's one `Settings`: environment variables prefixed `FURNACE_` (docs/configuration.md).

Built in `create_app`, never at import, so a test builds an app with its own settings
(docs/design/style.md 8). Lists (API keys, furnaces) are comma-separated strings in the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"

if TYPE_CHECKING:
    from service.alerting import AlertPolicy
    from service.bundle import BundleAlertPolicy
    from service.signing import BundleTrust

CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every knob of `furnace serve`; defaults suit one replica on a small host."""

    model_config = SettingsConfigDict(env_prefix="FURNACE_", extra="ignore", frozen=True)

    # Connections and identity
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = ""
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # Model bundle: a folder path, or a name under models_dir
    bundle: str = "default"
    models_dir: Path = REPO_MODELS
    intra_op_threads: int = Field(1, ge=1, le=64)
    inference_workers: int = Field(1, ge=1, le=16)
    model_poll_seconds: float = Field(5.0, ge=0)  # poll model:desired; 0 turns it off

    # Security (docs/design/serving.md 5.1): keys from the environment or files, one key per line
    api_keys: CommaList = []
    api_keys_file: Path | None = None
    admin_keys: CommaList = []
    admin_keys_file: Path | None = None
    auth_disabled: bool = False
    # Reads (GET /v1/...): a key is needed when FURNACE_REQUIRE_READ_KEY is true or read keys are
    # set; read, write and admin keys are all accepted there (docs/configuration.md)
    read_keys: CommaList = []
    read_keys_file: Path | None = None
    require_read_key: bool = False
    redis_read_timeout_seconds: float = Field(2.0, gt=0, le=60)  # GET routes: then 503
    http_concurrency: int = Field(256, ge=1)  # requests in progress; beyond: 503 (not probes)
    http_max_connections: int = Field(1024, ge=8)  # beyond: the longest idle one is closed
    http_header_timeout_seconds: float = Field(10.0, gt=0)  # connect/idle -> request head
    http_body_timeout_seconds: float = Field(60.0, gt=0)  # request head -> whole body
    http_keep_alive_seconds: int = Field(5, ge=1)  # uvicorn's idle keep-alive timeout
    max_body_bytes: int = Field(8_000_000, ge=1024)
    http_queue: int = Field(32, ge=1)  # HTTP windows waiting for inference; beyond: 503
    max_frames: int = Field(64, ge=1, le=10_000)
    max_image_pixels: int = Field(4096 * 4096, ge=64 * 64)
    max_request_pixels: int = Field(64 * 1024 * 1024, ge=64 * 64)  # all frames of one POST
    decode_workers: int = Field(1, ge=1, le=16)  # the pool that decodes posted frames
    http_inference_workers: int = Field(1, ge=1, le=16)  # ORT for HTTP; streams have their own

    # Bundle signatures (docs/export.md "Signing"): base64 Ed25519 public keys
    trusted_keys: CommaList = []
    trusted_keys_file: Path | None = None
    allow_unsigned_bundles: bool = False  # development only: serve unsigned bundles

    # Stream ingestion (docs/design/serving.md 1)
    ingest: bool = True
    exit_on_consumer_failure: bool = True  # let the restart policy act (docs/design/serving.md 5.3)
    furnaces: CommaList = []
    shard_index: int = Field(0, ge=0)
    shard_count: int = Field(1, ge=1, le=1024)
    block_ms: int = Field(1000, ge=10, le=10_000)
    read_count: int = Field(500, ge=1, le=100_000)
    claim_min_idle_ms: int = Field(60_000, ge=100)
    claim_interval_seconds: float = Field(20.0, gt=0)
    discovery_interval_seconds: float = Field(10.0, gt=0)
    max_deliveries: int = Field(5, ge=1)
    grace_seconds: float = Field(1.0, ge=0.25)
    staleness_seconds: float = Field(5.0, gt=0)
    current_maxlen: int = Field(7200, ge=100)  # trimming applies to what the service writes
    detections_maxlen: int = Field(20_000, ge=100)
    dlq_maxlen: int = Field(10_000, ge=100)
    alerts_maxlen: int = Field(10_000, ge=100)
    lease_ttl_ms: int = Field(15_000, ge=1000)
    # Sensor time at most this far ahead of the entry's arrival (its stream id) or the request's
    # receipt; beyond it the entry is dead-lettered ("future"), a POST gets 422 (docs/service.md)
    max_future_skew_seconds: float = Field(30.0, ge=0)
    # Furnaces (or "*": all) whose late entries are scored as backfill instead of dead-lettered
    backfill_furnaces: CommaList = []

    # Alert episodes: open on k abnormal of the last n windows, close after m clean ones.
    # None (unset): the bundle's calibrated `alert_policy`, else 3 of 4 and 3 (docs/service.md)
    alert_k: int | None = Field(None, ge=1)
    alert_n: int | None = Field(None, ge=1)
    alert_m: int | None = Field(None, ge=1)
    max_furnace_labels: int = Field(64, ge=1)
    # Monitoring (docs/configuration.md): a furnace without a new window for this long (wall
    # clock) reports every modality down; the detection delay objective (unset: grace + 1 s)
    no_data_seconds: float = Field(30.0, gt=0)
    delay_objective_seconds: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check_objective(self) -> Settings:
        objective = self.delay_objective_seconds
        if objective is not None and objective <= self.grace_seconds:
            msg = (
                f"FURNACE_DELAY_OBJECTIVE_SECONDS {objective:g} must exceed "
                f"FURNACE_GRACE_SECONDS {self.grace_seconds:g}: no window closes sooner"
            )
            raise ValueError(msg)
        return self

    def delay_objective(self) -> float:
        """The detection delay objective (p99) in seconds: a window closes only once sensor
        time passes its end + grace, so grace + 1 s unless FURNACE_DELAY_OBJECTIVE_SECONDS."""
        if self.delay_objective_seconds is not None:
            return self.delay_objective_seconds
        return self.grace_seconds + 1.0

    @field_validator(
        "api_keys", "admin_keys", "read_keys", "furnaces", "backfill_furnaces", mode="before"
    )
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.shard_index >= self.shard_count:
            msg = f"FURNACE_SHARD_INDEX {self.shard_index} must be < FURNACE_SHARD_COUNT"
            raise ValueError(msg)
        if self.alert_k is not None and self.alert_n is not None and self.alert_k > self.alert_n:
            msg = "FURNACE_ALERT_K must be <= FURNACE_ALERT_N"
            raise ValueError(msg)
        if not self.auth_disabled and not self.write_keys():
            msg = (
                "no API keys: set FURNACE_API_KEYS (comma-separated) or FURNACE_API_KEYS_FILE, "
                "or FURNACE_AUTH_DISABLED=true for a closed test network"
            )
            raise ValueError(msg)
        self.bundle_trust()  # a malformed trusted key stops the start
        return self

    def bundle_trust(self) -> BundleTrust:
        """The keys a bundle must be signed with (FURNACE_TRUSTED_KEYS and the lines of
        FURNACE_TRUSTED_KEYS_FILE), and whether unsigned bundles are allowed.

        Raises:
            ValueError: a key is malformed or the file cannot be read.
        """
        from service.signing import BundleTrust, read_key_file

        texts = list(self.trusted_keys)
        if self.trusted_keys_file is not None:
            texts += read_key_file(self.trusted_keys_file)
        return BundleTrust.from_texts(texts, allow_unsigned=self.allow_unsigned_bundles)

    def write_keys(self) -> tuple[str, ...]:
        """Keys accepted on write routes (admin keys are accepted there too)."""
        return tuple(dict.fromkeys([*self._keys(self.api_keys, self.api_keys_file)])) + (
            self.admin_key_set()
        )

    def read_key_set(self) -> tuple[str, ...] | None:
        """Keys accepted on read routes (read, write and admin keys); None: reads are open."""
        read = self._keys(self.read_keys, self.read_keys_file)
        if not (self.require_read_key or read):
            return None
        return tuple(dict.fromkeys(read)) + self.write_keys()

    def backfills(self, furnace_id: str) -> bool:
        """Whether the furnace's late entries are scored as backfill (FURNACE_BACKFILL_FURNACES)."""
        return "*" in self.backfill_furnaces or furnace_id in self.backfill_furnaces

    def admin_key_set(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self._keys(self.admin_keys, self.admin_keys_file)))

    @staticmethod
    def _keys(inline: list[str], file: Path | None) -> list[str]:
        keys = list(inline)
        if file is not None:
            try:
                text = file.read_text(encoding="utf-8")
            except OSError as exc:
                msg = f"cannot read the key file {file}: {exc}"
                raise ValueError(msg) from exc
            keys += [line.strip() for line in text.splitlines() if line.strip()]
            keys = [k for k in keys if not k.startswith("#")]
        return keys

    def alert_policy(self, bundle: BundleAlertPolicy | None) -> AlertPolicy:
        """The alert policy to run with a bundle: FURNACE_ALERT_K/N/M where set, the rest
        from the bundle's calibrated `alert_policy` (`Manifest.alert_policy`), else 3/4/3.

        Raises:
            ValueError: the combination has k > n (e.g. FURNACE_ALERT_K above the bundle's n).
        """
        from service.alerting import resolve_policy

        return resolve_policy(bundle, k=self.alert_k, n=self.alert_n, m=self.alert_m)

    def bundle_path(self, name: str | None = None) -> Path:
        """A bundle name under models_dir, or a path (absolute or with a slash)."""
        value = name or self.bundle
        if "/" in value or value.startswith("."):
            return Path(value)
        return self.models_dir / value


def bundle_problem(settings: Settings, name: str | None = None) -> str | None:
    """None when the bundle `name` (default FURNACE_BUNDLE) is a folder with a manifest, else
    one line saying what is wrong and which bundles FURNACE_MODELS_DIR holds."""
    path = settings.bundle_path(name)
    if (path / "manifest.json").is_file():
        return None
    what = "has no manifest.json" if path.is_dir() else "does not exist"
    found = available_bundles(settings.models_dir)
    listing = ", ".join(found) if found else "none"
    return (
        f"bundle {name or settings.bundle!r} ({path}) {what}; bundles in "
        f"FURNACE_MODELS_DIR={settings.models_dir}: {listing}"
    )


def available_bundles(models_dir: Path) -> list[str]:
    """Names of the folders under `models_dir` that hold a manifest.json."""
    try:
        return sorted(p.name for p in models_dir.iterdir() if (p / "manifest.json").is_file())
    except OSError:
        return []


def describe_errors(exc: ValidationError) -> str:
    """One line naming each failing setting's variable, its value and what is expected, e.g.
    `FURNACE_PORT='abc': Input should be a valid integer (an integer)`."""
    problems = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if not isinstance(x, int)]
        text = str(err.get("msg", "")).removeprefix("Value error, ")
        if loc:
            name = "FURNACE_" + loc[0].upper()
            value = err.get("input")
            shown = f"={value!r}" if isinstance(value, (str, int, float)) else ""
            field = Settings.model_fields.get(loc[0])
            kind = _expected(field.annotation) if field is not None else ""
            text = f"{name}{shown}: {text}" + (f" (expected {kind})" if kind else "")
        problems.append(text)
    return "; ".join(problems)


def _expected(annotation: object) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", Path: "a path"}
    for kind, text in names.items():
        if annotation is kind or annotation == (kind | None):
            return text
    return ""
