"""The options tree (``options.py``): defaults written once, the schedule rule, the CLI's vocabulary."""

from __future__ import annotations

import dataclasses

import pytest

from RayEmbRegistrationLib.options import (DetectionOptions, OptionsError, RefineOptions, RegistrationOptions,
                                           schedule_iterations,
                                           schedule_levels, schedule_lrs)


def test_refinement_schedule_is_the_default_and_scales():
    o = RegistrationOptions()
    s = RefineOptions.schedule()
    assert (s.levels, s.iterations, s.lr_mm) == (o.refine.levels, o.refine.iterations, o.refine.lr_mm)
    assert o.refine.levels == (32, 64, 96) and o.refine.iterations == (60, 40, 20) and o.refine.lr_mm == (8.0, 3.0, 1.0)
    s = RefineOptions.schedule(256, 150)
    assert s.levels == (32, 64, 256) and s.iterations == (150, 100, 50)
    s = RefineOptions.schedule(48, 30)  # small grids: no duplicate levels, one learning rate per level
    assert s.levels == (32, 48) and len(s.iterations) == len(s.lr_mm) == 2
    assert s.lr_mm == (8.0, 1.0)
    assert schedule_levels(48) == (32, 48) and schedule_iterations(30, 2) == (30, 20) and schedule_lrs(1) == (3.0,)


def test_cli_levels_use_the_same_rule():
    o = RefineOptions().with_levels([32, 64])
    assert o.levels == (32, 64) and o.lr_mm == schedule_lrs(2) and o.iterations == (60, 40)  # counts kept per level
    assert RefineOptions().with_levels(None, [5, 3, 2]).iterations == (5, 3, 2)
    with pytest.raises(OptionsError, match="one per level"):  # two counts for three levels is a mistake
        RefineOptions().with_levels(None, [5, 3])


@pytest.mark.parametrize("changes, field", [
    (dict(refine=dict(levels=())), "refine.levels"), (dict(refine=dict(levels=(0,))), "refine.levels"),
    (dict(refine=dict(levels=(5000,))), "refine.levels"),
    (dict(refine=dict(levels=(32, 64), iterations=(1, 2, 3))), "refine.iterations"),
    (dict(refine=dict(iterations=(0, 1, 1))), "refine.iterations"),
    (dict(pnp=dict(ransac_threshold_px=0)), "pnp.ransac_threshold_px"),
    (dict(pnp=dict(ransac_threshold_px=-1.0)), "pnp.ransac_threshold_px"),
    (dict(pnp=dict(ransac_threshold_px=float("nan"))), "pnp.ransac_threshold_px"),
    (dict(detection=dict(n_bone_keep=0)), "detection.n_bone_keep"),
    (dict(detection=dict(n_bone_keep=-3)), "detection.n_bone_keep"),
    (dict(detection=dict(n_view_pool=0)), "detection.n_view_pool"),
    (dict(detection=dict(n_bone_candidates=0)), "detection.n_bone_candidates"),
    (dict(detection=dict(n_templates=3)), "detection.n_templates"), (dict(device="gpu"), "device"),
    (dict(seed=-1), "seed"), (dict(initial="landmarks"), "initial"),
])
def test_invalid_values_are_refused_never_replaced(changes, field):
    with pytest.raises(OptionsError) as e:
        RegistrationOptions().replace(**changes)
    assert e.value.field == field and field in str(e.value)


def test_template_counts_match_the_templates_table():
    from RayEmbRegistrationLib.options import TEMPLATE_COUNTS
    from RayEmbRegistrationLib.detection.templates import inference_template_angles

    for n in TEMPLATE_COUNTS:
        assert len(inference_template_angles(n)) == n
    with pytest.raises(ValueError):
        inference_template_angles(3)


def test_ransac_threshold_is_defined_at_the_reference_resolution():
    from RayEmbRegistrationLib.geometry.camera import Intrinsics
    from RayEmbRegistrationLib.options import PnPOptions

    p = PnPOptions(ransac_threshold_px=10.0)
    assert p.threshold_px(Intrinsics.deepfluoro(256)) == 10.0
    assert p.threshold_px(Intrinsics.deepfluoro(1536)) == 60.0  # the same detector, 6× finer pixels


def test_options_are_frozen_and_replace_changes_sub_trees():
    o = RegistrationOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.seed = 3
    p = o.replace(seed=3, detection={"n_bone_keep": 100}, refine={"enabled": False})
    assert p.seed == 3 and p.detection.n_bone_keep == 100 and not p.refine.enabled
    assert o.detection.n_bone_keep == 600 and o.refine.enabled  # the original is unchanged
    d = p.to_dict()
    assert d["detection"]["n_bone_keep"] == 100 and d["refine"]["levels"] == [32, 64, 96]
    assert DetectionOptions().n_bone_candidates == 2000  # one default on every device
    with pytest.raises(OptionsError, match="n_bone_candidates"):
        DetectionOptions(n_bone_candidates=None)


def test_depth_valley_modes_and_bool_option_files():
    """``refine.depth_valley`` is one of ``DEPTH_VALLEY_MODES`` ("retry" by default); a bool in a saved options file
    reads as "always" (True) or "off" (False); anything else is refused, naming the modes."""
    from RayEmbRegistrationLib.options import DEPTH_VALLEY_MODES

    assert DEPTH_VALLEY_MODES == ("off", "retry", "always") and RefineOptions().depth_valley == "retry"
    assert RefineOptions(depth_valley=True).depth_valley == "always"
    assert RefineOptions(depth_valley=False).depth_valley == "off"
    for bad in ("sometimes", 1, None):
        with pytest.raises(OptionsError, match="refine.depth_valley.*off, retry, always"):
            RefineOptions(depth_valley=bad)
