"""Typed results (``results.py``): how a registration reads to a person, the display subset, JSON fields."""

import numpy as np

from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics
from RayEmbRegistrationLib.results import DepthSearchSummary, Landmark, PnPHypothesis, RegistrationResult


def _result(**kw):
    intr = Intrinsics.deepfluoro(64)
    cam = Camera(intr, np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 700.0], [0, 0, 0, 1]]))
    marks = [Landmark("F1", np.zeros(3), np.array([1.0, 2.0]), np.array([1.0, 3.0]), 0.9, "fiducial", True)]
    marks += [Landmark(f"bone-{i}", np.zeros(3), np.zeros(2), np.zeros(2), c, "bone", inl)
              for i, (c, inl) in enumerate([(0.2, False), (0.9, False), (0.5, True), (0.7, True)])]
    base = dict(initial=cam, refined=cam, final=cam, final_stage="refined", landmarks=marks, n_correspondences=5,
                inliers=3, similarity_before=0.5, similarity_after=0.75, timings_s={"pnp": 0.1, "total": 2.0},
                pnp_rmse_px=1.25)
    base.update(kw)
    return RegistrationResult(**base)


def test_headline_and_summary_lines():
    r = _result()
    assert r.headline() == "final: refined; inliers 3/5; NCC 0.500 -> 0.750"
    lines = r.summary_lines()
    assert lines[0] == "final pose from stage 'refined' (initial: rayemb)"
    assert "  PnP: 3/5 inliers, 1.25 px RMS" in lines and any(l.startswith("  timings: pnp 0.10 s") for l in lines)
    ds = DepthSearchSummary(1.4, 0.3, 0.5, 64, 17, (0.6, 0.7), "depth-searched start")
    r2 = _result(depth_search=ds, warnings=["check me"], similarity_after=None)
    assert r2.headline() == "final: refined; inliers 3/5; depth corrected x1.40"
    assert "  warning: check me" in r2.summary_lines()
    assert _result(depth_search=DepthSearchSummary(1.0, 0.3, 0.3, 64, 17, (0.6,), "PnP start")).headline().count("depth") == 0


def test_for_display_keeps_fiducials_and_the_best_bone_points():
    r = _result()
    shown = r.for_display(max_bone_points=2)
    assert [m.label for m in shown.landmarks] == ["F1", "bone-3", "bone-2"]  # inliers first, then confidence
    assert len(r.landmarks) == 5  # the result itself is unchanged


def test_json_fields_are_plain():
    r = _result(pnp_hypotheses=[PnPHypothesis(40, 0.6, True), PnPHypothesis(20, 0.4, False)],
                depth_search=DepthSearchSummary(1.0, 0.3, 0.3, 64, 17, (0.6,), "PnP start"))
    d = r.to_json_fields()
    assert d["pnp_hypotheses"][0] == {"inliers": 40, "coarse_similarity": 0.6, "chosen": True, "detection": "all bone"}
    assert d["depth_search"]["candidates"] == 17 and d["depth_search"]["chosen"] == "PnP start"
    assert _result().to_json_fields() == {"pnp_hypotheses": [], "depth_search": {}, "rescue": {}}
    from RayEmbRegistrationLib.registration.rescue import RescueSummary

    rescued = _result(rescue=RescueSummary("uncertain", ("low similarity",), 50, 4, 32, 0.77, 0.83, True, 6.5, 10))
    assert rescued.to_json_fields()["rescue"] == {
        "status_before": "uncertain", "reasons_before": ("low similarity",), "starts": 50, "refined": 4, "grid_px": 32,
        "similarity_before": 0.77, "similarity": 0.83, "adopted": True, "seconds": 6.5, "screen_iterations": 10}
    assert any("adopted, similarity 0.7700 -> 0.8300" in line for line in rescued.summary_lines())
    reseated = _result(initial_reseated=True)
    assert any("started from PnP's orientation at the most similar depth" in line for line in reseated.summary_lines())
    assert not any("most similar depth" in line for line in _result().summary_lines())
