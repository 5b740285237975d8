"""The ray-embedding network and its weight files.

Owns: the ray-embedding network and its weight files.

The per-pixel embedding network (a registry of small U-Net-like encoder–decoders trained from scratch,
selected by name), the input normalisation shared by DRRs and real X-rays, and reading/writing weight files
(safetensors + a JSON config + a ``.sha256`` manifest next to the weights).

Shapes: images are (B, 1, H, W) float32 in [0, 1] (``normalize_image`` of a line-integral image);
``EmbeddingNet.forward`` returns (B, D, H, W) per-pixel embeddings (not normalised).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..resources import BUNDLED_MODEL

__all__ = [
    "ModelConfig",
    "EmbeddingNet",
    "BACKBONES",
    "register_backbone",
    "build_model",
    "normalize_image",
    "save_model",
    "load_model",
    "sha256_file",
    "ModelFileError",
    "conv_block",
    "init_from_bundled",
]

class ModelFileError(ValueError):
    """A missing, corrupt or mismatching weight file (message names the file and what to do)."""


# ------------------------------------------------------------------------------------------------------------
# Input normalisation: ONE function for DRRs and real X-rays
# ------------------------------------------------------------------------------------------------------------


def normalize_image(img, lo_pct: float = 1.0, hi_pct: float = 99.5, size: int | None = None) -> torch.Tensor:
    """Line-integral image(s) → network input in [0, 1] (bone bright).

    Args:
        img: (H, W) or (B, H, W) NumPy or torch line-integral image(s) (Σ μ·Δs; larger = more attenuation).
        lo_pct, hi_pct: robust percentiles mapped to 0 and 1 (computed per image), then clipped.
        size: if given, bilinearly resample to ``size × size`` first (area-antialiased when shrinking).

    Returns: (B, 1, size, size) or (B, 1, H, W) float32 torch tensor (same device as a torch input).
    """
    x = torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img).float()
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"image must be (H, W) or (B, H, W), got shape {tuple(x.shape)}")
    x = torch.nan_to_num(x[:, None], nan=0.0, posinf=0.0, neginf=0.0)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        shrink = x.shape[-1] > size or x.shape[-2] > size
        x = F.interpolate(x, size=(size, size), mode="area" if shrink else "bilinear", **({} if shrink else {"align_corners": False}))
    flat = x.flatten(1)
    if flat.shape[1] > 65536:  # percentiles on a strided subset (exactly reproducible, fast)
        flat = flat[:, :: flat.shape[1] // 65536 + 1]
    lo = torch.quantile(flat, lo_pct / 100.0, dim=1)
    hi = torch.quantile(flat, hi_pct / 100.0, dim=1)
    scale = torch.clamp(hi - lo, min=1e-6)
    return ((x - lo[:, None, None, None]) / scale[:, None, None, None]).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------------------------
# Backbones
# ------------------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network and use it like it was trained (stored as JSON beside the weights)."""

    backbone: str = "unet_s2"
    dim: int = 32
    widths: tuple[int, ...] = (16, 32, 64, 96, 128)
    image_size: int = 224
    tau: float = 0.03  # InfoNCE temperature; also used for confidences at inference
    template_bone_multiplier: float = 2.0
    template_grid_deg: tuple[float, ...] = (-40.0, -20.0, 0.0, 20.0, 40.0)
    voxel_mm: float = 2.5
    #: trained on template tiles (``templates.template_isocenters``: a prepared network of a long CT); detection then
    #: uses them too. False: the 4 views about the bone centroid only (a network never trained on other tiles
    #: scores their points high and wrong)
    template_tiles: bool = False
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["template_grid_deg"] = list(self.template_grid_deg)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "widths" in known:
            known["widths"] = tuple(int(w) for w in known["widths"])
        if "template_grid_deg" in known:
            known["template_grid_deg"] = tuple(float(w) for w in known["template_grid_deg"])
        return cls(**known)


def conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """Two 3×3 convolutions (the first with ``stride``), each with GroupNorm and SiLU: the U-Net's building block."""
    g = max(1, min(8, cout // 4))
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(g, cout),
        nn.SiLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(g, cout),
        nn.SiLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net encoder–decoder. ``out_stride`` 2: the finest decoder level is at half resolution and the
    embedding map is bilinearly upsampled to full resolution (4× fewer full-res FLOPs); ``out_stride`` 1: a
    full-resolution level with a skip from the input."""

    def __init__(self, dim: int, widths: tuple[int, ...], out_stride: int = 2) -> None:
        super().__init__()
        self.out_stride = out_stride
        w = list(widths)
        if out_stride == 1:
            self.full = conv_block(1, w[0] // 2)
            self.stem = conv_block(w[0] // 2, w[0], stride=2)
        else:
            self.stem = conv_block(1, w[0], stride=2)
        self.down = nn.ModuleList([conv_block(w[i], w[i + 1], stride=2) for i in range(len(w) - 1)])
        self.up = nn.ModuleList([conv_block(w[i + 1] + w[i], w[i]) for i in reversed(range(len(w) - 1))])
        if out_stride == 1:
            self.up_full = conv_block(w[0] + w[0] // 2, w[0] // 2)
            self.head = nn.Conv2d(w[0] // 2, dim, 1)
        else:
            self.head = nn.Conv2d(w[0], dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        x0 = x - 0.5
        full = self.full(x0) if self.out_stride == 1 else None
        skips = [self.stem(full if full is not None else x0)]
        for d in self.down:
            skips.append(d(skips[-1]))
        y = skips.pop()
        for u in self.up:
            s = skips.pop()
            y = F.interpolate(y, size=s.shape[-2:], mode="bilinear", align_corners=False)
            y = u(torch.cat([y, s], 1))
        if full is not None:
            y = F.interpolate(y, size=full.shape[-2:], mode="bilinear", align_corners=False)
            y = self.up_full(torch.cat([y, full], 1))
            return self.head(y)
        y = self.head(y)
        return F.interpolate(y, size=(H, W), mode="bilinear", align_corners=False)


BACKBONES: dict[str, Callable[[ModelConfig], nn.Module]] = {}


def register_backbone(name: str):
    """Decorator: register a backbone factory ``f(config) -> nn.Module`` mapping (B,1,H,W) → (B,D,H,W)."""

    def deco(fn):
        BACKBONES[name] = fn
        return fn

    return deco


@register_backbone("unet_s2")
def _unet_s2(cfg: ModelConfig) -> nn.Module:
    return UNet(cfg.dim, cfg.widths, out_stride=2)


@register_backbone("unet_s1")
def _unet_s1(cfg: ModelConfig) -> nn.Module:
    return UNet(cfg.dim, cfg.widths, out_stride=1)


class EmbeddingNet(nn.Module):
    """Image (B, 1, H, W) in [0, 1] → per-pixel embeddings (B, D, H, W). ``config`` travels with the weights."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        if self.config.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.config.backbone!r}; registered: {sorted(BACKBONES)}")
        self.backbone = BACKBONES[self.config.backbone](self.config)
        # metadata filled by load_model
        self.sha256: str | None = None
        self.path: Path | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    @torch.no_grad()
    def embed(self, images, batch: int = 8) -> torch.Tensor:
        """Line-integral images (B, H, W) or (H, W) → embeddings (B, D, S, S) at ``config.image_size``."""
        dev = next(self.parameters()).device
        x = normalize_image(images, size=self.config.image_size).to(dev)
        return torch.cat([self.forward(c) for c in x.split(batch)], 0)


def build_model(config: ModelConfig | None = None, **overrides) -> EmbeddingNet:
    cfg = config or ModelConfig()
    if overrides:
        cfg = ModelConfig.from_dict({**cfg.to_dict(), **overrides})
    return EmbeddingNet(cfg)


# ------------------------------------------------------------------------------------------------------------
# Weight files
# ------------------------------------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sidecars(path: Path) -> tuple[Path, Path]:
    stem = path.name
    for suf in (".safetensors", ".pt", ".pth"):
        if stem.endswith(suf):
            stem = stem[: -len(suf)]
    return path.with_name(stem + ".json"), path.with_name(path.name + ".sha256")


def save_model(model: EmbeddingNet, path: str | Path, metadata: dict | None = None) -> str:
    """Write ``path`` (.safetensors, float32), ``<stem>.json`` (config + metadata) and ``<file>.sha256``.

    Returns the sha256 hex digest of the weight file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={"backbone": model.config.backbone})
    path.chmod(0o644)  # safetensors writes 0600; weights are meant to be shared
    cfg_path, sha_path = _sidecars(path)
    cfg_path.write_text(json.dumps({"config": model.config.to_dict(), "metadata": metadata or {}}, indent=2))
    digest = sha256_file(path)
    sha_path.write_text(f"{digest}  {path.name}\n")
    return digest


def init_from_bundled(model: nn.Module, prefixes: tuple[str, ...] = ()) -> int:
    """Copy into ``model`` every tensor of the bundled network whose name (starting with one of ``prefixes``, when
    given) and shape match; returns how many (a network built from the same blocks starts from its features)."""
    src = load_model(None).state_dict()
    dst = model.state_dict()
    n = 0
    for k, v in src.items():
        if (not prefixes or k.startswith(prefixes)) and k in dst and dst[k].shape == v.shape:
            dst[k] = v.clone()
            n += 1
    model.load_state_dict(dst)
    return n


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu", check_sha256: bool = True) -> EmbeddingNet:
    """Load a network for inference (eval mode).

    Args:
        path: ``.safetensors`` (or a ``torch.save``d state dict ``.pt``, read with ``weights_only=True``);
            ``None`` → the bundled model ``Resources/Models/rayemb_unet.safetensors``. The config is read from
            ``<stem>.json`` next to it; the sha256 from ``<file>.sha256`` (``sha256sum`` format).
        device: torch device.
        check_sha256: verify the weight file against its manifest (raises ``ModelFileError`` on mismatch or if
            the manifest is missing).
    """
    path = Path(path) if path is not None else BUNDLED_MODEL
    if not path.exists():
        raise ModelFileError(f"model weights not found: {path}. Pass the path of a .safetensors file written by "
                             "'rayemb train' (or leave it empty for the bundled model).")
    cfg_path, sha_path = _sidecars(path)
    digest = sha256_file(path)
    if check_sha256:
        if not sha_path.exists():
            raise ModelFileError(f"sha256 manifest missing for {path}: expected {sha_path}. Re-create it with "
                                 f"'sha256sum {path.name} > {sha_path.name}' if you trust the file.")
        expected = sha_path.read_text().split()[0].strip().lower() if sha_path.read_text().strip() else ""
        if expected != digest:
            raise ModelFileError(f"sha256 mismatch for {path}: file has {digest}, manifest {sha_path.name} says "
                                 f"{expected or '(empty)'}. The weights are corrupt or were replaced; re-download or "
                                 "re-train them.")
    if not cfg_path.exists():
        raise ModelFileError(f"model config missing: {cfg_path} (written by save_model next to the weights).")
    meta = json.loads(cfg_path.read_text())
    cfg = ModelConfig.from_dict(meta.get("config", meta))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as exc:
            raise ModelFileError(f"cannot read safetensors file {path}: {exc}") from exc
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelFileError(f"cannot read torch weights {path}: {exc}") from exc
        sd = sd.get("model", sd) if isinstance(sd, dict) else sd
    model = EmbeddingNet(cfg)
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise ModelFileError(f"weights in {path} do not fit backbone {cfg.backbone!r} from {cfg_path.name}: {exc}") from exc
    model.sha256 = digest
    model.path = path
    model.metadata = meta.get("metadata", {})
    return model.to(device).eval()
