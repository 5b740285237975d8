"""A DeepFluoro frame into a scene: what the Slicer module's *DeepFluoro* section loads.

Owns: ``load_deepfluoro_frame`` (CT, the 14 landmarks, the preprocessed X-ray with its geometry, the ground-truth
camera as a transform and a frustum) and ``truth_of`` (the ground truth a registration of that X-ray is scored on).

The X-ray node carries the truth in ``ATTR_TRUTH`` (JSON: the ground-truth camera and the landmark node's ID), so a
registration of it can report its error against the ground truth (``mrml.workflow.Workflow.summary``); nothing of
the truth reaches the registration itself. Reading and conversion: ``datasets.deepfluoro``."""

from __future__ import annotations

import json


from ..geometry.camera import Camera

__all__ = ["ATTR_TRUTH", "load_deepfluoro_frame", "truth_of"]

#: X-ray node attribute: the ground truth of a dataset frame (JSON ``{"camera": Camera.to_dict(), "landmarks_node_id"}``)
ATTR_TRUTH = "RayEmb.GroundTruth"


def load_deepfluoro_frame(scene, path, specimen, frame) -> dict:
    """Load specimen ``specimen`` (1–6 or a group name) and its frame ``frame`` of the DeepFluoro file ``path``
    into ``scene``. Returns ``{"ct", "landmarks", "xray", "truth_transform", "truth_frustum"}`` → nodes."""
    from ..datasets.deepfluoro import DeepFluoroFile
    from .outputs import camera_to_transform_node, ct_to_volume_node, fiducials_to_markups_node, \
        frustum_model_node, xray_to_volume_node

    with DeepFluoroFile(path) as f:
        sp = f.specimen(specimen)
        fr = sp.frame(frame)
        ct, lm = sp.ct(), sp.landmarks()
    tag = f"DeepFluoro {sp.id}"
    nodes = {"ct": ct_to_volume_node(scene, ct, f"{tag} CT"),
             "landmarks": fiducials_to_markups_node(scene, list(lm.labels), lm.ras, f"{tag} landmarks")}
    xr = xray_to_volume_node(scene, fr.xray.pixels, fr.xray.intrinsics, f"{tag} frame {fr.frame_id}")
    xr.SetAttribute(ATTR_TRUTH, json.dumps({"camera": fr.truth.to_dict(), "landmarks_node_id": nodes["landmarks"].GetID()}))
    nodes["xray"] = xr
    key = xr.GetID()
    nodes["truth_transform"] = camera_to_transform_node(scene, fr.truth, f"{tag} frame {fr.frame_id} camera (truth)",
                                                        "camera.truth", key)
    nodes["truth_frustum"] = frustum_model_node(scene, fr.truth, "truth", f"{tag} frame {fr.frame_id} frustum (truth)",
                                                key, color=(0.85, 0.15, 0.15))
    return nodes


def truth_of(scene, xray_node):
    """``(truth Camera, landmark RAS (N, 3))`` of an X-ray node loaded by ``load_deepfluoro_frame``, else None."""
    from .inputs import markups_node_to_fiducials

    text = xray_node.GetAttribute(ATTR_TRUTH) if xray_node is not None else None
    if not text:
        return None
    d = json.loads(text)
    lm_node = scene.GetNodeByID(d.get("landmarks_node_id", ""))
    if lm_node is None:
        return None
    return Camera.from_dict(d["camera"]), markups_node_to_fiducials(lm_node).ras
