"""Frozen, validated configuration of the CMG model (docs/design/cmg.md sections 3, 5, 6 and 11).

Each component owns its defaults in the field defaults. A config travels with every
checkpoint as `dataclasses.asdict(cfg)` and is rebuilt with `CMGConfig.from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

ALIGN_MODES = ("cpc", "infonce")
INIT_MODES = ("data", "uniform")
# 28 features per segment (docs/design/cmg.md 2) | 28 + 19 [ours]
CURRENT_FEATURE_SETS = ("base", "rich")
CAMERA_POOLS = ("attention", "attention_max")  # Phi_v pooling; "attention_max" adds a spatial max
# per-channel constants (docs/design/cmg.md 2) | per-frame standardisation
CAMERA_NORMS = ("global", "frame")
# residual against frame_{t-1} (docs/design/cmg.md 2) | the window's first
CAMERA_DIFFS = ("previous", "first")
CAMERA_CHANNELS = ("rgb", "physics")  # stem input: docs/design/cmg.md 2 | + redness, local contrast
CODE_TARGETS = (
    "none",
    "hotness",
    "hotspot",
)  # extra target reconstructed from the camera codes alone
PHYSICS_CHANNELS = 2  # camera_channels "physics" (features.physics_channels)
HEAD_POOLS = ("max", "meanmax")  # DetectorHead pooling over segments
RICH_CURRENT_EXTRA = 19  # extra features of current_feature_set "rich" (features.py)
CAMERA_SUMMARIES = ("none", "hotspot", "hotspot_relative")  # + hot-spot statistics [ours]
CURRENT_CONTEXTS = ("none", "long")  # baseline (B, 3) | + a long baseline, (B, 6) [ours]
LONG_CONTEXT_EXTRA = 6  # extra features of current_context "long" (features.py)


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


@dataclass(frozen=True)
class EncoderConfig:
    """Semantic and specific encoders (docs/design/cmg.md section 3, slimmed camera stem: see
    encoders.py)."""

    dim: int = 64  # D, width of the semantic transformers; must equal CodebookConfig.dim
    layers: int = 2  # transformer layers per semantic encoder
    heads: int = 4  # attention heads
    ff: int = 256  # transformer feed-forward width (4 D)
    dropout: float = 0.1
    stem_channels: tuple[int, int] = (32, 64)  # Phi_v stem: patchify 4x4/4, then 3x3/2
    specific_channels: tuple[int, int] = (16, 32)  # Psi_v stem (m_v has the last width)
    se_reduction: int = 8  # squeeze-excitation channel reduction in Phi_v
    decoder_channels: int = 16  # hidden width of the camera decoder's transposed convs

    def __post_init__(self) -> None:
        _require(self.dim > 0 and self.layers >= 0, f"dim > 0 and layers >= 0, got {self}")
        _require(
            self.heads > 0 and self.dim % self.heads == 0,
            f"dim ({self.dim}) must be divisible by heads ({self.heads}); change one of them",
        )
        _require(self.ff > 0, f"ff must be positive, got {self.ff}")
        _require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("stem_channels", "specific_channels"):
            value = tuple(getattr(self, name))
            _require(
                len(value) == 2 and all(c > 0 for c in value),
                f"{name} must be two positive channel counts, got {value}",
            )
            object.__setattr__(self, name, value)  # lists from YAML/JSON become tuples
        _require(
            0 < self.se_reduction <= self.stem_channels[1],
            f"se_reduction must be in (0, {self.stem_channels[1]}], got {self.se_reduction}",
        )
        _require(self.decoder_channels > 0, f"decoder_channels > 0, got {self.decoder_channels}")


@dataclass(frozen=True)
class CodebookConfig:
    """Shared codebook E with EMA updates, MM-EMA and dead-code reset (docs/design/cmg.md 4.2, 4.4,
    5)."""

    size: int = 128  # K (docs/design/cmg.md calls it M)
    dim: int = 64  # D
    decay: float = 0.99  # EMA gamma
    eps: float = 1e-5  # Laplace smoothing epsilon
    beta: float = 0.25  # commitment: 2 beta own code, beta partner's code (docs/design/cmg.md 4.3)
    dead_after: int = 150  # reset a code unused for more than this many training steps
    donor_within: int = 50  # donors: codes used within this many steps
    # "data": E from encoder outputs, N = 1 (docs/design/cmg.md 5 #13); "uniform": code
    init: str = "data"
    fused_update: bool = False  # paper Eq. 7 (one decay, n_c + n_v) instead of the released form

    def __post_init__(self) -> None:
        _require(self.size >= 2, f"codebook size must be >= 2, got {self.size}")
        _require(self.dim > 0, f"codebook dim must be positive, got {self.dim}")
        _require(0.0 < self.decay < 1.0, f"decay must be in (0, 1), got {self.decay}")
        _require(self.eps > 0.0, f"eps must be positive, got {self.eps}")
        _require(self.beta >= 0.0, f"beta must be >= 0, got {self.beta}")
        _require(
            0 < self.donor_within <= self.dead_after,
            f"need 0 < donor_within <= dead_after, got {self.donor_within} and {self.dead_after}",
        )
        _require(self.init in INIT_MODES, f"init must be one of {INIT_MODES}, got {self.init!r}")


@dataclass(frozen=True)
class CMGConfig:
    """The whole CMG model. Defaults follow docs/design/cmg.md section 6 ("Project start")."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    segments: int = 8  # T
    samples_per_segment: int = 4  # S, current samples per segment at 2 Hz
    frame_px: int = 64  # camera frames are frame_px x frame_px RGB
    recon_px: int = 32  # camera reconstruction target size
    n_classes: int = 6  # detector head outputs; index 0 is "normal"
    shared_codebook: bool = True  # False: ablation with one codebook per modality
    mm_ema: bool = True  # multi-modal EMA partner term + cross commitment
    reset: bool = True  # dead-code reset
    club: bool = True
    cpc: bool = True
    cmcm: bool = True
    cmcm_weight: float = 0.5
    align: str = "cpc"  # "cpc" | "infonce" (MICU-style ablation, docs/design/cmg.md 11)
    club_width: int = 64  # CLUB q-net width
    club_steps: int = 5  # q-net Adam steps per batch
    club_lr: float = 1e-3  # q-net learning rate (the caller builds the optimiser)
    cpc_self_weight: float = 0.1  # weight of the c->c and v->v CPC terms
    infonce_temperature: float = 0.1  # MICU-style InfoNCE (docs/design/cmg.md 11)
    infonce_mask: float = 0.3  # share of time steps masked in the fine/coarse InfoNCE
    # --- options beyond docs/design/cmg.md [ours]; the defaults reproduce the behaviour above --
    code_groups: int = 1  # G: product quantisation, G lookups of D/G sub-vectors per segment
    current_feature_set: str = "base"  # "rich": + baseline-relative stats per segment
    camera_pool: str = "attention"  # "attention_max": ‖ spatial max of the stem map
    camera_norm: str = "global"  # "frame": standardise each frame by its own channel stats
    camera_diff: str = "previous"  # "first": residual against the window's first frame
    specific_dropout: float = 0.0  # P(specific features zeroed in the decoders), per sample
    head_pool: str = "max"  # "meanmax": head pools mean ‖ max over segments
    camera_channels: str = "rgb"  # "physics": stems also read redness and local contrast
    code_target: str = "none"  # "hotness" | "hotspot": q_v alone reconstructs a low-res map
    code_target_weight: float = 1.0  # weight of that reconstruction in the total loss
    current_context: str = "none"  # "long": the baseline input also holds a slow median
    camera_summary: str = "none"  # "hotspot"(_relative): Phi_v reads per-segment hot-spot stats
    supervised_weight: float = 0.0  # > 0: cross-entropy of a pre-training head on labelled codes
    supervised_modality: str = "current"  # whose codes that head reads: current | camera

    def __post_init__(self) -> None:
        enc, book = self.encoder, self.codebook
        _require(
            isinstance(enc, EncoderConfig) and isinstance(book, CodebookConfig),
            "encoder and codebook must be EncoderConfig / CodebookConfig (use CMGConfig.from_dict)",
        )
        _require(self.code_groups >= 1, f"code_groups must be >= 1, got {self.code_groups}")
        _require(
            enc.dim == book.dim * self.code_groups,
            f"encoder.dim ({enc.dim}) must equal codebook.dim ({book.dim}) times code_groups"
            f" ({self.code_groups})",
        )
        for name, allowed in (
            ("current_feature_set", CURRENT_FEATURE_SETS),
            ("camera_pool", CAMERA_POOLS),
            ("camera_norm", CAMERA_NORMS),
            ("camera_diff", CAMERA_DIFFS),
            ("head_pool", HEAD_POOLS),
            ("camera_channels", CAMERA_CHANNELS),
            ("code_target", CODE_TARGETS),
            ("current_context", CURRENT_CONTEXTS),
            ("camera_summary", CAMERA_SUMMARIES),
        ):
            _require(
                getattr(self, name) in allowed,
                f"{name} must be one of {allowed}, got {getattr(self, name)!r}",
            )
        _require(0.0 <= self.specific_dropout < 1.0, "specific_dropout must be in [0, 1)")
        _require(self.code_target_weight >= 0.0, "code_target_weight must be >= 0")
        _require(self.supervised_weight >= 0.0, "supervised_weight must be >= 0")
        _require(
            self.supervised_modality in ("current", "camera"),
            f"supervised_modality must be current or camera, got {self.supervised_modality!r}",
        )
        _require(self.samples_per_segment >= 1, f"samples_per_segment >= 1, got {self}")
        _require(self.n_classes >= 2, f"n_classes must be >= 2, got {self.n_classes}")
        _require(
            self.frame_px >= 16 and self.frame_px % 8 == 0,
            f"frame_px must be a multiple of 8 and >= 16, got {self.frame_px}",
        )
        map_px = self.frame_px // 8
        ups = self.recon_px // map_px
        _require(
            self.recon_px <= self.frame_px
            and self.recon_px % map_px == 0
            and ups >= 2
            and ups & (ups - 1) == 0,
            f"recon_px ({self.recon_px}) must be frame_px/8 ({map_px}) times a power of two >= 2"
            f" and <= frame_px ({self.frame_px}); e.g. {min(4 * map_px, self.frame_px)}",
        )
        _require(
            self.align in ALIGN_MODES, f"align must be one of {ALIGN_MODES}, got {self.align!r}"
        )
        if self.align == "infonce":
            # docs/design/cmg.md 11: the MICU-style model drops Cross-CPC, CMCM and CLUB.
            for name in ("club", "cpc", "cmcm"):
                object.__setattr__(self, name, False)
        _require(
            not (self.club and not self.cpc),
            "club=True with cpc=False collapses the codes (docs/design/cmg.md 10.1, Table 2): "
            "set cpc=True, or club=False as well",
        )
        _require(
            not self.cpc or self.segments >= 3,
            f"Cross-CPC needs segments >= 3 (t in 1..T-2), got {self.segments}; "
            "raise segments or set cpc=False and club=False",
        )
        _require(self.segments >= 2, f"segments must be >= 2, got {self.segments}")
        _require(self.cmcm_weight >= 0.0, f"cmcm_weight >= 0, got {self.cmcm_weight}")
        _require(self.club_width > 0 and self.club_steps >= 0 and self.club_lr > 0, str(self))
        _require(self.cpc_self_weight >= 0.0, f"cpc_self_weight >= 0, got {self.cpc_self_weight}")
        _require(self.infonce_temperature > 0.0, "infonce_temperature must be positive")
        _require(0.0 <= self.infonce_mask < 1.0, "infonce_mask must be in [0, 1)")

    @property
    def current_features(self) -> int:
        """F_c, per-segment current feature size: 3 S raw + 12 stats + 3 relative + 1 (28),
        plus RICH_CURRENT_EXTRA with current_feature_set "rich", plus LONG_CONTEXT_EXTRA with
        current_context "long"."""
        extra = RICH_CURRENT_EXTRA if self.current_feature_set == "rich" else 0
        extra += LONG_CONTEXT_EXTRA if self.current_context == "long" else 0
        return 3 * self.samples_per_segment + 16 + extra

    @property
    def baseline_width(self) -> int:
        """Columns of the baseline input: 3 (per phase), 6 with current_context "long"."""
        return 6 if self.current_context == "long" else 3

    @property
    def camera_extra_channels(self) -> int:
        """Physics channels the camera stems read besides the six of docs/design/cmg.md 2 (0 or
        2)."""
        return PHYSICS_CHANNELS if self.camera_channels == "physics" else 0

    @property
    def hotness_px(self) -> int:
        """Side of the code_target "hotness" map (frame_px / 4)."""
        return self.frame_px // 4

    @property
    def map_px(self) -> int:
        """Side of the camera stems' feature maps (frame_px / 8)."""
        return self.frame_px // 8

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CMGConfig:
        """Rebuild from `dataclasses.asdict(cfg)` (e.g. read back from a checkpoint or JSON)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            msg = f"unknown CMGConfig fields {sorted(unknown)}"
            raise ValueError(msg)
        kwargs = dict(d)
        if isinstance(kwargs.get("encoder"), dict):
            kwargs["encoder"] = EncoderConfig(**kwargs["encoder"])
        if isinstance(kwargs.get("codebook"), dict):
            kwargs["codebook"] = CodebookConfig(**kwargs["codebook"])
        return cls(**kwargs)
