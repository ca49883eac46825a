"""The CMG ("Uni-Code") model: two modalities, one discrete codebook (docs/design/cmg.md sections
1-5, 9).

Xia, Huang, Zhu, Zhao, "Achieving Cross Modal Generalization with Multimodal Unified
Representation", NeurIPS 2023; released code haihuangcode/CMG. `forward` computes one
training step's losses for paired windows; in training mode it also updates the codebook
buffers (MM-EMA, dead-code reset) under no_grad. In eval mode nothing is updated.

CLUB q-nets: pass their optimiser to `forward(..., club_optimizer=opt)` to fit them on the
detached pairs of the same forward pass before the bound is taken (the released order, one
encoder pass per batch), or call `club_step(...)` first, which costs an extra no-grad encoder
pass. Build that optimiser over `club_parameters()`; the main one over `main_parameters()`.

Project choices beyond docs/design/cmg.md [ours]:
- The current features f_c are standardised per feature (buffers `current_mean/_std`, like
  the camera's); Phi_c, Psi_c and the rec_c target all use the standardised f_c. Raw f_c is
  dominated by the common current level and Cross-CPC then stays at log B for hundreds of
  steps. Unset input statistics (either modality) are taken from the first batch seen in
  training mode, ActNorm-style; `set_camera_stats` / `set_current_stats` /
  `set_input_stats_from` set them explicitly.
- Camera stems, decoder and pooling are slimmed or computed in equivalent cheaper forms
  for CPU speed (encoders.py, decoders.py).
- MM-EMA in the paper form (`fused_update`) uses parameter-free cross-attention within the
  window as the partner r (the paper's CA projections are unspecified).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model._util import check_modality
from model.club import QNets
from model.codebook import Codebook, EMAUpdate, Quantized
from model.config import CMGConfig
from model.contrast import cmcm_loss, micu_infonce
from model.cpc import CrossCPC
from model.decoders import CameraDecoder, CurrentDecoder, HotnessDecoder
from model.diagnostics import code_diagnostics
from model.encoders import (
    CameraSemanticEncoder,
    CameraSpecificEncoder,
    CurrentSemanticEncoder,
    CurrentSpecificEncoder,
)
from model.features import CameraInput, frame_target, hotness_target, hotspot_target
from model.normalize import InputNorm

_USER = {"current": 0, "camera": 1}  # rows of a shared codebook's idle counters


class LossBreakdown(NamedTuple):
    """Loss terms of one step (0-dim tensors; zeros for disabled terms)."""

    total: Tensor  # rec_c + rec_v + commit + club + cpc + cmcm_weight * cmcm + infonce
    #                (+ code_target_weight * rec_hotness with code_target "hotness" [ours])
    rec_c: Tensor
    rec_v: Tensor
    commit: Tensor  # own (2 beta) + cross (beta, with mm_ema)
    club: Tensor  # CLUB(q_c; s_c) + CLUB(q_v; s_v)
    cpc: Tensor
    cmcm: Tensor  # unweighted
    infonce: Tensor  # MICU-style fine + coarse (align == "infonce")
    supervised: Tensor  # unweighted cross-entropy of the pre-training head (supervised_weight)


class CMGOutput(NamedTuple):
    """Losses, codes and label-free diagnostics (docs/design/cmg.md 9) of one forward pass."""

    loss: LossBreakdown
    codes_c: Tensor  # (B, T) int64
    codes_v: Tensor  # (B, T) int64
    diagnostics: dict[str, Tensor]  # 0-dim detached tensors


def _cross_attention(query: Tensor, memory: Tensor) -> Tensor:
    """Parameter-free cross-attention within each window: softmax(q m^T / sqrt D) m.

    The paper's MM-EMA partner r = CA(query z^a, key/value z^b) (Eq. 7); its projections are
    not specified, so none are used [ours]. Args: (B, T, D) each. Returns: (B, T, D).
    """
    att = (query @ memory.transpose(1, 2) / math.sqrt(query.shape[-1])).softmax(dim=-1)
    return att @ memory


class CMG(nn.Module):
    """Semantic/specific encoders, codebook(s), decoders, CLUB q-nets and Cross-CPC."""

    def __init__(self, cfg: CMGConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.encoder.dim
        self.phi_c = CurrentSemanticEncoder(cfg)
        self.phi_v = CameraSemanticEncoder(cfg)
        self.psi_c = CurrentSpecificEncoder(cfg)
        self.psi_v = CameraSpecificEncoder(cfg)
        self.dec_c = CurrentDecoder(cfg)
        self.dec_v = CameraDecoder(cfg)
        # code_target "hotness" [ours]: a map reconstructed from q_v alone
        self.dec_h = HotnessDecoder(cfg) if cfg.code_target != "none" else None
        # supervised_weight [ours]: labels of one modality shape the codes during pre-training
        # (mean | max of its quantised segments); the head is dropped after pre-training
        d = cfg.encoder.dim
        self.sup_head = nn.Linear(2 * d, cfg.n_classes) if cfg.supervised_weight > 0 else None
        if cfg.shared_codebook:
            self.codebooks = nn.ModuleDict({"shared": Codebook(cfg.codebook, users=2)})
        else:
            self.codebooks = nn.ModuleDict(
                {m: Codebook(cfg.codebook, users=1) for m in ("current", "camera")}
            )
        self.cpc = CrossCPC(D, cfg.cpc_self_weight) if cfg.cpc else None
        self.club = QNets(D, cfg.club_width, modalities=2) if cfg.club else None  # Q_c, Q_v
        self.inputs = InputNorm(
            cfg.current_features,
            rich_current=cfg.current_feature_set == "rich",
            long_context=cfg.current_context == "long",
            camera_norm=cfg.camera_norm,
            camera_diff=cfg.camera_diff,
            camera_channels=cfg.camera_channels,
        )  # standardisation constants [ours]

    # --- public helpers ---------------------------------------------------------------------
    def set_camera_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set the per-channel frame mean and std (3,) on the [0, 1] scale."""
        self.inputs.set_camera(mean, std)

    def set_current_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set the mean and std (F_c,) that standardise the current features f_c [ours]."""
        self.inputs.set_current(mean, std)

    def set_input_stats_from(
        self, x_c: Tensor | None = None, baseline: Tensor | None = None, x_v: Tensor | None = None
    ) -> None:
        """Set the statistics from sample windows: x_c (B, T, S, 3) A with baseline (B, 3) A
        for the current, x_v (B, T, H, W, 3) uint8 for the camera."""
        self.inputs.set_from(x_c, baseline, x_v)

    @property
    def camera_mean(self) -> Tensor:
        """(3,) frame mean on the [0, 1] scale (buffer `inputs.camera_mean`)."""
        return self.inputs.camera_mean

    @property
    def camera_std(self) -> Tensor:
        """(3,) frame standard deviation on the [0, 1] scale."""
        return self.inputs.camera_std

    def _book(self, modality: str) -> tuple[Codebook, int]:
        """The codebook `modality` uses and its row in that codebook's idle counters."""
        check_modality(modality)
        if self.cfg.shared_codebook:
            return self.codebooks["shared"], _USER[modality]  # type: ignore[return-value]
        return self.codebooks[modality], 0  # type: ignore[return-value]

    def codebook_for(self, modality: str) -> Tensor:
        """(K, D) code vectors of `modality` (the same buffer for both when shared)."""
        return self._book(modality)[0].embed

    def features(
        self, modality: str, x: Tensor, baseline: Tensor | None = None
    ) -> Tensor | CameraInput:
        """Raw input -> encoder input: f_c (B, T, F_c), or CameraInput for the camera."""
        if check_modality(modality) == "current":
            if baseline is None:
                msg = "the current modality needs `baseline` (B, 3) in A"
                raise ValueError(msg)
            return self.inputs.current(x, baseline)
        return self.inputs.camera(x)

    def encode(self, modality: str, x: Tensor, baseline: Tensor | None = None) -> Tensor:
        """Semantic embedding z (B, T, D) of raw input.

        Args:
            modality: "current" (x = x_c (B, T, S, 3) A, with baseline (B, 3) A) or
                "camera" (x = x_v (B, T, H, W, 3) uint8).
            x: raw window.
            baseline: per-phase baseline, current only.
        """
        f = self.features(modality, x, baseline)
        return self.phi_c(f) if modality == "current" else self.phi_v(f)

    def quantize(self, modality: str, z: Tensor) -> Quantized:
        """Nearest code of each (B, T, D) embedding; never updates buffers.

        `vectors` is E[codes]; in training mode, when z carries gradient, it is the
        straight-through z + sg(E[codes] - z) instead (same values up to rounding).
        """
        quant = self._lookup(modality, z)
        if self.training and z.requires_grad:
            return quant._replace(vectors=z + (quant.vectors - z).detach())
        return quant

    def split_groups(self, z: Tensor) -> Tensor:
        """(B, T, D) -> (B, T*G, D/G): the sub-vectors product quantisation looks up [ours].

        Segment-major: sub-vector g of segment t is row t*G + g. The identity for G = 1.
        """
        G = self.cfg.code_groups
        return z if G == 1 else z.reshape(z.shape[0], z.shape[1] * G, z.shape[2] // G)

    def _lookup(self, modality: str, z: Tensor) -> Quantized:
        """Nearest code of each (sub-)vector of z (B, T, D); vectors merged back to (B, T, D).

        Codes and distances are (B, T*G) with code_groups G (segment-major), else (B, T).
        """
        quant = self._book(modality)[0].quantize(self.split_groups(z))
        return quant._replace(vectors=quant.vectors.reshape(z.shape))

    @torch.no_grad()
    def init_codebook_from(self, z_c: Tensor, z_v: Tensor) -> None:
        """Data initialisation of E (docs/design/cmg.md 5 #13): random encoder outputs, N = 1.

        Args:
            z_c: (B, T, D) current embeddings; z_v: (B, T, D) camera embeddings. A shared
                codebook samples from both; separate codebooks from their own modality.
        """
        z_c, z_v = self.split_groups(z_c), self.split_groups(z_v)
        if self.cfg.shared_codebook:
            self._book("current")[0].init_from(torch.cat([z_c, z_v]).reshape(-1, z_c.shape[-1]))
        else:
            self._book("current")[0].init_from(z_c)
            self._book("camera")[0].init_from(z_v)

    def _maybe_init(self, z_c: Tensor, z_v: Tensor) -> None:
        if self.training and not all(bool(b.initialised) for b in self.codebooks.values()):
            self.init_codebook_from(z_c, z_v)

    def main_parameters(self) -> list[nn.Parameter]:
        """Everything the main Adam trains: all parameters except the CLUB q-nets."""
        club = {id(p) for p in self.club_parameters()}
        return [p for p in self.parameters() if id(p) not in club]

    def club_parameters(self) -> list[nn.Parameter]:
        """Parameters of the CLUB q-nets Q_c, Q_v (their own optimiser, lr cfg.club_lr)."""
        return [] if self.club is None else list(self.club.parameters())

    def clip_groups(self) -> dict[str, list[nn.Parameter]]:
        """Main parameters by module, for "clip grad-norm 0.5 per module" (docs/design/cmg.md
        4.8)."""
        names = ("phi_c", "phi_v", "psi_c", "psi_v", "dec_c", "dec_v", "dec_h", "cpc", "sup_head")
        mods = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        return {n: list(m.parameters()) for n, m in mods.items()}

    # --- CLUB -------------------------------------------------------------------------------
    def club_step(
        self, x_c: Tensor, baseline: Tensor, x_v: Tensor, optimizer: torch.optim.Optimizer
    ) -> Tensor:
        """Fit the CLUB q-nets on detached (code, specific) pairs of this batch (docs/design/cmg.md
        4.6).

        Runs the encoders without gradient (no EMA or reset; only the one-time input
        statistics and codebook data init in training mode), then `cfg.club_steps` optimiser
        steps. Passing the optimiser to `forward` instead saves this extra encoder pass.

        Args:
            x_c: (B, T, S, 3) A; baseline: (B, 3) A; x_v: (B, T, H, W, 3) uint8.
            optimizer: over `club_parameters()`.

        Returns:
            0-dim summed q-net negative log-likelihood (both modalities) at the last step.
        """
        if self.club is None:
            return x_c.new_zeros(())
        with torch.no_grad():
            f_c, v_in = self.inputs.current(x_c, baseline), self.inputs.camera(x_v)
            z_c, z_v = self.phi_c(f_c), self.phi_v(v_in)
            self._maybe_init(z_c, z_v)
            s_c, (_, s_v) = self.psi_c(f_c), self.psi_v(v_in)
            q_c = self._lookup("current", z_c).vectors
            q_v = self._lookup("camera", z_v).vectors
        x, y = torch.stack([q_c, q_v]), torch.stack([s_c, s_v])  # (2, B, T, D)
        return self.club.fit(x, y, optimizer, self.cfg.club_steps)

    # --- training step ----------------------------------------------------------------------
    def forward(
        self,
        x_c: Tensor,
        baseline: Tensor,
        x_v: Tensor,
        club_optimizer: torch.optim.Optimizer | None = None,
        labels: Tensor | None = None,
    ) -> CMGOutput:
        """One step's losses for paired windows (docs/design/cmg.md 4).

        Args:
            x_c: (B, T, S, 3) phase currents in A.
            baseline: (B, 3) per-phase baseline in A.
            x_v: (B, T, H, W, 3) uint8 frames, segment-aligned with x_c.
            club_optimizer: if given (training mode, club on), the q-nets are first fitted on
                this pass's detached pairs, as the released code does.
            labels: (B,) class indices for the supervised term (supervised_weight > 0).

        Returns:
            CMGOutput(loss, codes_c, codes_v, diagnostics).
        """
        cfg, beta = self.cfg, self.cfg.codebook.beta
        zero = x_c.new_zeros((), dtype=torch.float32)
        f_c = self.inputs.current(x_c, baseline)  # (B, T, F_c), standardised
        v_in = self.inputs.camera(x_v)  # CameraInput, (B, T, 3, H, W) x 3
        z_c, z_v = self.phi_c(f_c), self.phi_v(v_in)  # (B, T, D)
        s_c = self.psi_c(f_c)  # (B, T, D)
        m_v, s_v = self.psi_v(v_in)  # (B*T, C, h, w), (B, T, D)
        self._maybe_init(z_c, z_v)
        B = z_c.shape[0]

        # 4.1 quantise against E as it is before this step's update; straight-through.
        quant_c = self._lookup("current", z_c)  # codes (B, T*G) with code_groups G
        quant_v = self._lookup("camera", z_v)
        e_c, e_v = quant_c.vectors, quant_v.vectors  # (B, T, D) = E[codes], no gradient
        q_c = z_c + (e_c - z_c).detach()
        q_v = z_v + (e_v - z_v).detach()

        # 4.3 commitment: 2 beta own code, beta the partner's code (cross only with MM-EMA)
        commit_own = 2 * beta * (F.mse_loss(z_c, e_c) + F.mse_loss(z_v, e_v))
        commit_cross = beta * (F.mse_loss(z_c, e_v) + F.mse_loss(z_v, e_c)) if cfg.mm_ema else zero

        # 4.8 reconstruction; specific_dropout [ours] hides the specific features of some
        # samples from the decoders, so that the codes must carry what they reconstruct
        s_dec, m_dec = s_c, m_v
        if cfg.specific_dropout > 0.0 and self.training:
            keep = (torch.rand(B, device=z_c.device) >= cfg.specific_dropout).to(s_c.dtype)
            s_dec = s_c * keep[:, None, None]
            T = z_c.shape[1]
            m_dec = m_v * keep.repeat_interleave(T)[:, None, None, None]
        rec_c = F.mse_loss(self.dec_c(q_c, s_dec), f_c)
        rec_v = F.mse_loss(self.dec_v(q_v, m_dec), frame_target(v_in.pixels, cfg.recon_px))
        # code_target [ours]: the camera codes alone reconstruct a hotness / hot-spot map
        rec_h = zero
        if self.dec_h is not None:
            make = hotspot_target if cfg.code_target == "hotspot" else hotness_target
            target = make(v_in.pixels, cfg.hotness_px, v_in.extra)
            rec_h = F.mse_loss(self.dec_h(q_v), target)

        # 4.6 CLUB(q_m; s_m), q-nets optionally fitted first on detached pairs
        club_c = club_v = club_nll = zero
        if self.club is not None:
            x, y = torch.stack([q_c, q_v]), torch.stack([s_c, s_v])  # (2, B, T, D)
            if club_optimizer is not None and self.training:
                club_nll = self.club.fit(x, y, club_optimizer, cfg.club_steps)
            perm = torch.stack([torch.randperm(B, device=x.device) for _ in range(2)])  # (2, B)
            club_c, club_v = self.club.bound(x, y, perm).unbind()

        # 4.7 Cross-CPC on pre-quantisation features
        cpc = self.cpc(z_c, z_v) if self.cpc is not None else None

        # 4.5 CMCM against a snapshot of E (the buffers change in place below)
        cmcm = zero
        if cfg.cmcm:
            book_c, book_v = self.codebook_for("current"), self.codebook_for("camera")
            snap_c = book_c.clone()
            snap_v = snap_c if cfg.shared_codebook else book_v.clone()
            cmcm = cmcm_loss(self.split_groups(z_c), self.split_groups(z_v), snap_c, snap_v)

        # docs/design/cmg.md 11: MICU-style fine + coarse InfoNCE
        fine = coarse = zero
        if cfg.align == "infonce":
            fine, coarse = micu_infonce(
                z_c, z_v, temperature=cfg.infonce_temperature, mask=cfg.infonce_mask
            )

        sup = zero
        if self.sup_head is not None and labels is not None:
            q = q_c if cfg.supervised_modality == "current" else q_v  # (B, T, D)
            pooled = torch.cat([q.mean(dim=1), q.amax(dim=1)], dim=-1)  # (B, 2D)
            sup = F.cross_entropy(self.sup_head(pooled), labels.long())

        cpc_loss = cpc.loss if cpc is not None else zero
        loss = LossBreakdown(
            total=rec_c
            + rec_v
            + commit_own
            + commit_cross
            + club_c
            + club_v
            + cpc_loss
            + cfg.cmcm_weight * cmcm
            + fine
            + coarse
            + cfg.code_target_weight * rec_h
            + cfg.supervised_weight * sup,
            rec_c=rec_c,
            rec_v=rec_v,
            commit=commit_own + commit_cross,
            club=club_c + club_v,
            cpc=cpc_loss,
            cmcm=cmcm,
            infonce=fine + coarse,
            supervised=sup,
        )

        resets = 0
        if self.training:
            resets = self._update_codebooks(z_c, z_v, quant_c.codes, quant_v.codes)

        diagnostics = self._diagnostics(quant_c.codes, quant_v.codes, resets)
        acc = (cpc.acc_c2v, cpc.acc_v2c, cpc.acc_c2c, cpc.acc_v2v) if cpc else (zero,) * 4
        extra = {
            "cpc_acc_c2v": acc[0],
            "cpc_acc_v2c": acc[1],
            "cpc_acc_c2c": acc[2],
            "cpc_acc_v2v": acc[3],
            "club_c": club_c,
            "club_v": club_v,
            "club_nll": club_nll,
            "commit_own": commit_own,
            "commit_cross": commit_cross,
            "infonce_fine": fine,
            "infonce_coarse": coarse,
            "rec_hotness": rec_h,  # unweighted; in total with code_target_weight
        }
        diagnostics.update({k: v.detach() for k, v in extra.items()})
        return CMGOutput(loss, quant_c.codes, quant_v.codes, diagnostics)

    # --- buffer updates (training only) -----------------------------------------------------
    @torch.no_grad()
    def _update_codebooks(self, z_c: Tensor, z_v: Tensor, i_c: Tensor, i_v: Tensor) -> int:
        """MM-EMA (docs/design/cmg.md 4.2), idle counters and dead-code reset (4.4). Returns
        resets."""
        cfg = self.cfg
        a_c, a_v = z_c.detach(), z_v.detach()  # (B, T, D)
        if not cfg.mm_ema:
            partner_c, partner_v = a_c, a_v  # plain VQ-EMA: 0.5 (own + own) = own
        elif cfg.codebook.fused_update:
            partner_c, partner_v = _cross_attention(a_c, a_v), _cross_attention(a_v, a_c)
        else:
            partner_c, partner_v = a_v, a_c  # as released: the time-aligned partner
        sp = self.split_groups  # product quantisation: pair sub-vectors at the same (b, t, g)
        upd_c = EMAUpdate(i_c, sp(a_c), sp(partner_c))
        upd_v = EMAUpdate(i_v, sp(a_v), sp(partner_v))
        book_c, row_c = self._book("current")
        book_v, row_v = self._book("camera")
        if cfg.shared_codebook:
            book_c.ema_update([upd_c, upd_v])  # order as released: current, then camera
        else:
            book_c.ema_update([upd_c])
            book_v.ema_update([upd_v])
        book_c.tick(row_c, i_c)
        book_v.tick(row_v, i_v)
        if not cfg.reset:
            return 0
        return sum(b.reset_dead() for b in self.codebooks.values())  # type: ignore[operator]

    @torch.no_grad()
    def _diagnostics(self, i_c: Tensor, i_v: Tensor, resets: int) -> dict[str, Tensor]:
        """Label-free code diagnostics (docs/design/cmg.md 9) for one batch."""
        book_c, row_c = self._book("current")
        book_v, row_v = self._book("camera")
        return {
            **code_diagnostics(i_c, i_v, self.cfg.codebook.size),
            "resets": torch.tensor(float(resets)),
            "active_codes_c": book_c.active(row_c).float(),
            "active_codes_v": book_v.active(row_v).float(),
            "code_norm_mean": self.codebook_for("current").norm(dim=-1).mean(),
        }


def build_cmg(cfg: CMGConfig) -> CMG:
    """The CMG model for `cfg` (randomly initialised; the codebook is data-initialised on the
    first training forward when cfg.codebook.init == "data")."""
    return CMG(cfg)
