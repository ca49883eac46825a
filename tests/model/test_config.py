"""Config validation and round trips (docs/design/cmg.md 6, 10.1, 11)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

from model.config import CMGConfig, CodebookConfig, EncoderConfig
from tests.model.factories import make_tiny_cfg


def test_defaults_follow_cmg_md_section_6() -> None:
    cfg = CMGConfig()
    assert (cfg.encoder.dim, cfg.codebook.size, cfg.segments, cfg.samples_per_segment) == (
        64,
        128,
        8,
        4,
    )
    assert cfg.current_features == 28
    assert cfg.codebook.decay == 0.99 and cfg.codebook.beta == 0.25
    assert (cfg.codebook.dead_after, cfg.codebook.donor_within) == (150, 50)
    assert cfg.cmcm_weight == 0.5 and cfg.cpc_self_weight == 0.1 and cfg.club_steps == 5


def test_club_without_cpc_is_rejected() -> None:
    with pytest.raises(ValueError, match="cpc"):
        CMGConfig(club=True, cpc=False)
    CMGConfig(club=False, cpc=False)  # both off is the "-CLUB -Cross-CPC" ablation


def test_infonce_align_forces_club_cpc_cmcm_off() -> None:
    cfg = CMGConfig(align="infonce", club=True, cpc=False)
    assert (cfg.club, cfg.cpc, cfg.cmcm) == (False, False, False)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"encoder": EncoderConfig(dim=32, heads=4)}, "dim"),
        ({"align": "micu"}, "align"),
        ({"frame_px": 60}, "frame_px"),
        ({"recon_px": 24}, "recon_px"),
        ({"segments": 2}, "segments"),
    ],
)
def test_invalid_configs_say_what_to_change(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CMGConfig(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [{"decay": 1.0}, {"init": "zeros"}, {"donor_within": 200}, {"size": 1}],
)
def test_codebook_config_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CodebookConfig(**bad)  # type: ignore[arg-type]


def test_encoder_heads_must_divide_dim() -> None:
    with pytest.raises(ValueError, match="heads"):
        EncoderConfig(dim=10, heads=4)


def test_from_dict_round_trips_through_json() -> None:
    cfg = replace(make_tiny_cfg(), shared_codebook=False, cmcm_weight=0.3)
    back = CMGConfig.from_dict(json.loads(json.dumps(asdict(cfg))))
    assert back == cfg
    with pytest.raises(ValueError, match="unknown"):
        CMGConfig.from_dict({**asdict(cfg), "colour": "red"})
