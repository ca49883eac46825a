"""The service's one `Settings`: environment variables prefixed `FURNACE_` (docs/configuration.md).

Built in `create_app`, never at import, so a test builds an app with its own settings
(docs/design/style.md 8). Lists (API keys, furnaces) are comma-separated strings in the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"

if TYPE_CHECKING:
    from service.alerting import AlertPolicy
    from service.bundle import BundleAlertPolicy

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
    http_concurrency: int = Field(256, ge=1)  # beyond it uvicorn answers 503
    max_body_bytes: int = Field(8_000_000, ge=1024)
    http_queue: int = Field(32, ge=1)  # HTTP windows waiting for inference; beyond: 503
    max_frames: int = Field(64, ge=1, le=10_000)
    max_image_pixels: int = Field(4096 * 4096, ge=64 * 64)

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

    # Alert episodes: open on k abnormal of the last n windows, close after m clean ones.
    # None (unset): the bundle's calibrated `alert_policy`, else 3 of 4 and 3 (docs/service.md)
    alert_k: int | None = Field(None, ge=1)
    alert_n: int | None = Field(None, ge=1)
    alert_m: int | None = Field(None, ge=1)
    max_furnace_labels: int = Field(64, ge=1)

    @field_validator("api_keys", "admin_keys", "furnaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
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
        return self

    def write_keys(self) -> tuple[str, ...]:
        """Keys accepted on write routes (admin keys are accepted there too)."""
        return tuple(dict.fromkeys([*self._keys(self.api_keys, self.api_keys_file)])) + (
            self.admin_key_set()
        )

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
