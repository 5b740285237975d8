"""Export a training checkpoint's weights as shippable ``.safetensors`` (the bundled network, a ``--init`` base).

Owns: ``export_checkpoint`` — a ``last.pt`` written by ``rayemb train`` (read with ``weights_only=True``, its
sha256 checked when a ``<file>.sha256`` manifest lies beside it) → ``model.save_model`` (weights + ``<stem>.json``
config and provenance + ``<file>.sha256``).

Usage (what made ``Resources/Models/rayemb_unet.safetensors``; the provenance goes into the ``.json``):
    python -m RayEmbRegistrationLib.training.export checkpoints/general96_all/last.pt OUT.safetensors \\
        [--note "the bundled general network"]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path

__all__ = ["export_checkpoint"]


def export_checkpoint(checkpoint, out, metadata: dict | None = None) -> str:
    """Write the weights of ``checkpoint`` (a ``rayemb train`` ``last.pt``) to ``out`` (.safetensors) with the
    checkpoint's config; the ``.json`` metadata records the step, the data stream it was trained on, the source
    file and its sha256, plus ``metadata``. Returns the sha256 of the weight file. ``ValueError`` when the
    checkpoint does not match its sha256 manifest or holds no model."""
    import torch

    from ..detection.model import ModelConfig, build_model, save_model, sha256_file

    ckpt = Path(checkpoint)
    manifest = ckpt.with_name(ckpt.name + ".sha256")
    digest = sha256_file(ckpt)
    if manifest.is_file() and manifest.read_text().split()[0] != digest:
        raise ValueError(f"{ckpt} does not match its manifest {manifest} (sha256 {digest[:12]}…): the file is "
                         "corrupt or was replaced without updating the manifest.")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if "model" not in state or "config" not in state:
        raise ValueError(f"{ckpt} is not a checkpoint of 'rayemb train' (no model / config entry).")
    model = build_model(ModelConfig.from_dict(json.loads(state["config"])))
    model.load_state_dict(state["model"])
    meta = {"step": int(state.get("step", 0)), "seed": state.get("seed"),
            "data": json.loads(state["data"]) if state.get("data") else None,
            "source_checkpoint": str(checkpoint), "source_sha256": digest,
            "exported_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "see": "Resources/Models/MODEL.md", **(metadata or {})}
    return save_model(model, out, metadata=meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a last.pt written by 'rayemb train'")
    p.add_argument("out", help="the .safetensors file to write (its .json and .sha256 beside it)")
    p.add_argument("--note", default=None, help="a line of provenance kept in the .json metadata")
    a = p.parse_args(argv)
    digest = export_checkpoint(a.checkpoint, a.out, {"note": a.note} if a.note else None)
    print(f"wrote {a.out} (sha256 {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
