"""Training data generation (deterministic, resumable), training (loss goes down, resume), DDP (gloo, 2 ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from RayEmbRegistrationLib.detection.model import ModelConfig, build_model, normalize_image
from RayEmbRegistrationLib.geometry.camera import project_points
from RayEmbRegistrationLib.training.data import ShardSet
from RayEmbRegistrationLib.training.generate import generate
from RayEmbRegistrationLib.training.train import infonce_loss, train

torch.set_num_threads(1)

S = 48
TINY = dict(n_variants=2, n_queries=3, size=S, voxel_mm=5.0, n_points=128, bar=False)
TINY_CFG = ModelConfig(dim=8, widths=(8, 16, 16))


@pytest.fixture(scope="module")
def lumbar(shared_data):
    return str(shared_data / "ct" / "lumbar_spine_tptbox.nii.gz")


@pytest.fixture(scope="module")
def tiny_data(lumbar, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "a"
    generate([lumbar], out, seed=5, **TINY)
    return out


def _shard_arrays(path: Path) -> dict:
    z = np.load(path)
    return {k: z[k] for k in z.files if k != "seconds"}


def test_generate_is_deterministic_and_resumable(lumbar, tiny_data, tmp_path):
    a = sorted(tiny_data.glob("shard_*.npz"))
    assert [p.name for p in a] == ["shard_00_000.npz", "shard_00_001.npz"]
    # same seed elsewhere, after an "interruption" (first shard done, second missing) → identical data
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    (b_dir / "shard_00_000.npz").write_bytes(a[0].read_bytes())
    mtime = (b_dir / "shard_00_000.npz").stat().st_mtime_ns
    generate([lumbar], b_dir, seed=5, **TINY)
    assert (b_dir / "shard_00_000.npz").stat().st_mtime_ns == mtime  # kept, not re-rendered
    for pa in a:
        x, y = _shard_arrays(pa), _shard_arrays(b_dir / pa.name)
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    # contents are consistent: stored projection matrices put the stored bone points on bright pixels
    s = _shard_arrays(a[1])
    assert s["queries"].shape == (3, S, S) and s["templates"].shape == (25, S, S)
    uv = project_points(s["query_P"][0], s["points"].astype(np.float64))
    ok = np.isfinite(uv).all(1) & (uv >= 0).all(1) & (uv <= S - 1).all(1)
    assert ok.sum() > 20
    q = s["queries"][0].astype(np.float32)
    at_bone = q[np.round(uv[ok, 1]).astype(int), np.round(uv[ok, 0]).astype(int)]
    assert np.median(at_bone) > np.median(q)
    # another seed → other data; other settings in the same folder → clear error
    c = generate([lumbar], tmp_path / "c", seed=6, **{**TINY, "n_variants": 1})
    assert not np.array_equal(_shard_arrays(c[0])["query_poses"], _shard_arrays(a[0])["query_poses"])
    with pytest.raises(ValueError, match="other settings"):
        generate([lumbar], b_dir, seed=6, **TINY)


@pytest.mark.parametrize("where", ["anywhere", "clinical"])
def test_generate_pose_center_anywhere_centres_queries_on_bone_voxels(lumbar, tiny_data, tmp_path, where):
    """``anywhere`` (RAYEMB_SAMPLER) and ``clinical`` (CLINICAL_SAMPLER: C-arm use, close-ups) query poses look
    at random bone voxels; ``clinical`` sources are 450–900 mm from them."""
    from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics
    from RayEmbRegistrationLib.inputs.volume import BONE_HU, load_ct

    cen = _shard_arrays(tiny_data / "shard_00_000.npz")
    np.testing.assert_allclose(cen["query_centers"], np.repeat(cen["isocenter"][None], 3, 0))
    out = generate([lumbar], tmp_path / "any", seed=5, pose_center=where, **{**TINY, "n_variants": 1, "n_queries": 6})
    s = _shard_arrays(out[0])
    c = s["query_centers"]
    assert c.shape == (6, 3) and np.ptp(c, axis=0).max() > 10.0  # different centres
    vol = load_ct(lumbar).resampled(5.0)
    ijk = np.round(vol.ras_to_ijk_points(c)).astype(int)
    ijk = np.clip(ijk, 0, np.array(vol.hu.shape) - 1)
    # each centre lies in a bone voxel (jittered within it: allow the neighbourhood)
    for i, j, k in ijk:
        assert vol.hu[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, max(k - 1, 0):k + 2].max() >= BONE_HU
    # and the query pose looks at it: most centres project inside the image
    inside = [np.all((uv >= 0) & (uv <= S - 1)) for uv in
              (project_points(P, c[q:q + 1])[0] for q, P in enumerate(s["query_P"]))]
    assert sum(inside) >= 4
    if where == "clinical":
        d = [np.linalg.norm(Camera(Intrinsics.deepfluoro(S), T).source_ras - x) for T, x in zip(s["query_poses"], c)]
        assert all(450 - 1e-6 <= v <= 900 + 1e-6 for v in d), d
    with pytest.raises(ValueError, match="pose_center"):
        generate([lumbar], tmp_path / "bad", pose_center="nowhere", **TINY)


def test_a_few_training_steps_reduce_the_loss(tiny_data):
    shards = ShardSet(tiny_data)
    batch = shards.batch(np.random.default_rng(0), n_queries=2, n_templates=4, n_points=20)
    assert batch["valid"].sum() > 10
    torch.manual_seed(0)
    model = build_model(TINY_CFG)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.cat([normalize_image(batch["query"]), normalize_image(batch["templates"])])

    def loss_fn():
        f = model(x)
        return infonce_loss(f[:2], f[2:], batch["uv_query"], batch["uv_templates"], batch["valid"], tau=0.05)

    losses = []
    for _ in range(12):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > np.log(S * S) * 0.5  # starts near chance
    assert loss_fn().item() < 0.8 * losses[0]


def test_points_the_query_does_not_show_are_taught_to_score_below_the_null_level(sample_ct):
    """``n_outside``: the batch adds points every template sees whose projection falls clearly outside the query
    (or behind its source) — clinical close-ups of the real pelvis CT; with ``null_score`` the loss pushes their
    best score in the query below that level, and batches without them are drawn exactly as before (no extra
    random draws)."""
    from RayEmbRegistrationLib.training.stream import DRRStream

    shards = DRRStream([sample_ct], size=S, voxel_mm=6.0, pool=4, renew=0, n_points=256, poses="clinical", seed=2)
    plain = shards.batch(np.random.default_rng(0), n_queries=2, n_templates=4, n_points=20)
    again = shards.batch(np.random.default_rng(0), n_queries=2, n_templates=4, n_points=20, n_outside=0)
    assert torch.equal(plain["uv_query"].nan_to_num(-1), again["uv_query"].nan_to_num(-1))
    b = shards.batch(np.random.default_rng(0), n_queries=2, n_templates=4, n_points=20, n_outside=10)
    assert b["valid_out"].sum() > 0 and b["uv_templates_out"].shape == (2, 4, 10, 2)
    s = shards.shards[b["shard"]]
    for q, (uvt, ok) in zip(b["query_idx"], zip(b["uv_templates_out"], b["valid_out"])):
        # recover the points from their template pixels: each must project outside the query (4 px margin)
        X = s["points"].astype(np.float64)
        uv_all = project_points(s["template_P"][b["template_idx"]], X)  # (T, M, 2)
        uvq = project_points(s["query_P"][q], X)
        for t_uv in uvt[:, ok].permute(1, 0, 2).numpy():  # (T, 2) per outside point
            j = int(np.argmin(np.nanmax(np.abs(uv_all.transpose(1, 0, 2) - t_uv), axis=(1, 2))))
            assert not (np.isfinite(uvq[j]).all() and (uvq[j] >= -4).all() and (uvq[j] <= S + 3).all())
    torch.manual_seed(0)
    model = build_model(TINY_CFG)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.cat([normalize_image(b["query"]), normalize_image(b["templates"])])

    def outside_peak() -> float:
        from RayEmbRegistrationLib.detection.detect import gram_scores
        from RayEmbRegistrationLib.detection.templates import sample_embeddings

        with torch.no_grad():
            f = model(x)
            m = b["valid_out"][0]
            E, _ = sample_embeddings(f[2:], b["uv_templates_out"][0][:, m])
            return float(gram_scores(E.permute(1, 2, 0), f[0].reshape(f.shape[1], -1).T).max(1).values.mean())

    first = outside_peak()
    for _ in range(15):
        f = model(x)
        loss = infonce_loss(f[:2], f[2:], b["uv_query"], b["uv_templates"], b["valid"], tau=0.05,
                            uv_templates_out=b["uv_templates_out"], valid_out=b["valid_out"], null_score=0.6)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert outside_peak() < first - 0.05, (first, outside_peak())


def test_train_checkpoints_and_resume_continue_the_same_run(tiny_data, tmp_path):
    kw = dict(batch_queries=1, n_templates=2, n_points=8, config=TINY_CFG, bar=False, val_every=2, seed=3,
              log=lambda m: None, ckpt_every=1)
    full = tmp_path / "full"
    summary = train(tiny_data, full, val_data=tiny_data, steps=4, **kw)
    assert summary["n"] > 0 and summary["median_px"] >= 0 and "median_mm" in summary
    assert (full / "model.safetensors").exists() and (full / "model.safetensors.sha256").exists()
    part = tmp_path / "part"
    train(tiny_data, part, steps=4, max_minutes=1e-9, **kw)  # "interrupted": the time budget stops it after step 1
    import json

    assert json.loads((part / "model.json").read_text())["metadata"]["step"] == 1
    train(tiny_data, part, steps=4, **kw)  # resumes from part/last.pt
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(part / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=1e-4)


def test_ddp_two_cpu_ranks_keep_identical_weights(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "RayEmbRegistrationLib.training.train", "--data", str(tiny_data), "--out", str(out),
           "--steps", "3", "--batch", "1", "--templates", "2", "--points", "8", "--widths", "8", "16", "16",
           "--dim", "8", "--device", "cpu", "--threads", "1", "--dump-rank-weights", "--no-resume"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    w0 = torch.load(out / "rank0_weights.pt", weights_only=True)
    w1 = torch.load(out / "rank1_weights.pt", weights_only=True)
    init = build_model(TINY_CFG)  # same seed → the start point; the weights must have moved
    moved = False
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], atol=0, rtol=0)
        if w0[k].dtype.is_floating_point and not torch.equal(w0[k], init.state_dict()[k]):
            moved = True
    assert moved


def test_finetune_reports_before_and_after_within_budget(lumbar, tmp_path):
    from RayEmbRegistrationLib.detection.model import load_model, save_model
    from RayEmbRegistrationLib.training.finetune import finetune

    torch.manual_seed(0)
    base = tmp_path / "base.safetensors"
    save_model(build_model(ModelConfig(dim=8, widths=(8, 16, 16), image_size=S, voxel_mm=5.0)), base)
    rep = finetune(lumbar, tmp_path / "ft", model_path=base, seconds=3.0, n_train_queries=3, n_eval_queries=2,
                   bar=False, log=lambda m: None)
    assert rep["steps"] >= 1 and rep["seconds_train"] < 30
    for k in ("before", "after"):
        assert rep[k]["n"] > 0 and np.isfinite(rep[k]["median_px"]) and rep[k]["median_mm"] > 0
    tuned = load_model(rep["finetuned_model"])  # sha256 manifest written with it
    assert tuned.sha256 != load_model(base).sha256
    assert (tmp_path / "ft" / "finetune_report.json").exists()


def test_resume_from_a_checkpoint_is_bit_for_bit(tiny_data, tmp_path):
    """``rayemb train --resume CKPT``: two CPU steps in one go equal one step, a checkpoint copied elsewhere (as if
    committed), and one more step resumed from it — exactly, weights and optimiser state."""
    import shutil

    kw = dict(batch_queries=1, n_templates=2, n_points=8, config=TINY_CFG, bar=False, val_every=10**9, seed=3,
              log=lambda m: None, ckpt_every=1, threads=1)
    train(tiny_data, tmp_path / "straight", steps=2, **kw)
    train(tiny_data, tmp_path / "first", steps=2, max_minutes=1e-9, **kw)  # stops after step 1
    committed = tmp_path / "committed.pt"
    shutil.copyfile(tmp_path / "first" / "last.pt", committed)
    train(tiny_data, tmp_path / "second", steps=2, resume_from=committed, **{**kw, "seed": 99})  # the seed comes along
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "second" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 2 and b["seed"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["opt"]["state"].values(), b["opt"]["state"].values()):
        assert all(torch.equal(sa[n], sb[n]) for n in sa)
    with pytest.raises(ValueError, match="no such checkpoint"):
        train(tiny_data, tmp_path / "x", steps=2, resume_from=tmp_path / "missing.pt", **kw)


def test_drr_stream_renders_fresh_queries_with_exact_projections(sample_ct, tmp_path):
    """On-the-fly data: every batch renews queries (new poses), the batch format is ShardSet's, and each query's
    points land where its projection matrix says (the DRR of a one-voxel bright spot would put it there)."""
    from RayEmbRegistrationLib.training.stream import DRRStream

    torch.set_num_threads(1)
    s = DRRStream([sample_ct], size=32, voxel_mm=6.0, pool=3, renew=1, n_points=64, poses="clinical", seed=0)
    before = s.shards[0]["query_P"].copy()
    s.at_step(0)
    s.at_step(0)  # once per step
    b = s.batch(np.random.default_rng(1), n_queries=2, n_templates=4, n_points=10)
    assert s.rendered == 1 and not np.allclose(before, s.shards[0]["query_P"])
    assert b["query"].shape == (2, 32, 32) and b["templates"].shape == (4, 32, 32) and b["valid"].shape == (2, 10)
    assert b["valid"].any()
    q = b["query_idx"][0]
    P = s.shards[0]["query_P"][q]
    X = s.shards[0]["points"].astype(np.float64)
    uv = project_points(P, X)
    got = b["uv_query"][0][b["valid"][0]].numpy()
    assert all(np.isclose(uv, g).all(1).any() for g in got)  # every labelled pixel is a true projection
    out = train(s, tmp_path / "run", steps=3, batch_queries=1, n_templates=2, n_points=8, config=TINY_CFG,
                bar=False, val_every=10**9, ckpt_every=10**9, log=lambda m: None)
    assert out == {} and s.rendered == 3  # one renewal per training step (steps 0, 1, 2; step 0 was done above)
    with pytest.raises(ValueError, match="poses must be one of"):
        DRRStream([sample_ct], size=32, poses="random")


def test_a_render_process_gives_the_same_data_as_rendering_in_process(sample_ct):
    """workers=1: a separate process renders the renewals of the coming steps; the pool is the one rendering in the
    training process gives (the renewal of step k depends only on (seed, k)), also after a jump (a resumed run),
    and close() stops the process."""
    from RayEmbRegistrationLib.training.stream import DRRStream

    torch.set_num_threads(1)
    kw = dict(size=32, voxel_mm=6.0, pool=3, renew=2, n_points=64, poses="clinical", seed=3)
    here, there = DRRStream([sample_ct], workers=0, **kw), DRRStream([sample_ct], workers=1, **kw)
    try:
        proc = there._worker.proc
        assert proc.is_alive()
        for k in (0, 1, 2, 7):  # 7: a jump restarts the process at that step
            here.at_step(k)
            there.at_step(k)
            np.testing.assert_allclose(there.shards[0]["queries"], here.shards[0]["queries"], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(there.shards[0]["query_P"], here.shards[0]["query_P"])
        assert here.rendered == there.rendered == 8
        assert there._worker.proc is not proc and not proc.is_alive()
        proc = there._worker.proc
    finally:
        there.close()
    assert not proc.is_alive() and there._worker is None
    with pytest.raises(ValueError, match="workers must be"):
        DRRStream([sample_ct], workers=2, **kw)


def test_drr_stream_draws_queries_in_other_appearance_families(sample_ct):
    """``appearance`` = the share of queries made in the diffdrr or physics family: the same poses as without it,
    other images for about that share, the same images again for the same (seed, step) (a resumed run, a render
    process), and the stream's description says so; a share outside [0, 1] is refused."""
    from RayEmbRegistrationLib.training.stream import DRRStream

    torch.set_num_threads(1)
    kw = dict(size=32, voxel_mm=6.0, pool=4, renew=2, n_points=64, poses="clinical", seed=5)
    plain, mixed, again = DRRStream([sample_ct], **kw), DRRStream([sample_ct], appearance=1.0, **kw), \
        DRRStream([sample_ct], appearance=1.0, **kw)
    for s in (plain, mixed, again):
        s.at_step(0)
        s.at_step(1)
    np.testing.assert_array_equal(mixed.shards[0]["query_P"], plain.shards[0]["query_P"])
    q_plain, q_mixed = plain.shards[0]["queries"], mixed.shards[0]["queries"]
    assert all(not np.allclose(q_plain[k], q_mixed[k]) for k in range(len(q_plain)))
    np.testing.assert_array_equal(again.shards[0]["queries"], q_mixed)
    assert mixed.describe()["appearance"] == 1.0 and "appearance" not in plain.describe()
    half = DRRStream([sample_ct], appearance=0.5, **{**kw, "pool": 16, "renew": 0})
    other = sum(not np.allclose(a, b) for a, b in zip(half.shards[0]["queries"],
                                                       DRRStream([sample_ct], **{**kw, "pool": 16, "renew": 0}).shards[0]["queries"]))
    assert 2 <= other <= 14
    with pytest.raises(ValueError, match="appearance is a share"):
        DRRStream([sample_ct], appearance=1.5, **kw)


def test_a_network_is_fine_tuned_at_another_input_size(sample_ct, tmp_path):
    """Preparation at a smaller input size: the fully convolutional weights of a 64² network continue at 32² (the
    saved config says 32, the weights moved); a size the network cannot halve often enough is refused."""
    from RayEmbRegistrationLib.detection.model import load_model, save_model
    from RayEmbRegistrationLib.training.stream import DRRStream

    torch.manual_seed(0)
    base = tmp_path / "base64.safetensors"
    save_model(build_model(ModelConfig(dim=8, widths=(8, 16, 16), image_size=64, voxel_mm=6.0)), base)
    s = DRRStream([sample_ct], size=32, voxel_mm=6.0, pool=2, renew=1, n_points=64, seed=0)
    logs = []
    train(s, tmp_path / "run", steps=2, batch_queries=1, n_templates=2, n_points=8, init_weights=str(base), bar=False,
          val_every=10**9, ckpt_every=10**9, log=logs.append)
    tuned, b = load_model(tmp_path / "run" / "model.safetensors"), load_model(base)
    assert tuned.config.image_size == 32 and b.config.image_size == 64
    assert any("at 32²" in m for m in logs)
    assert any(not torch.equal(x, y) for x, y in zip(tuned.state_dict().values(), b.state_dict().values()))
    assert tuned.embed(np.zeros((40, 40), np.float32)).shape[-2:] == (32, 32)  # it now runs at its new size
    odd = DRRStream([sample_ct], size=36, voxel_mm=6.0, pool=1, renew=0, n_points=64, seed=0)
    with pytest.raises(ValueError, match="multiple of 8 px"):
        train(odd, tmp_path / "odd", steps=1, init_weights=str(base), bar=False, log=lambda m: None)


def test_drr_stream_can_train_on_the_inference_template_views(sample_ct, lumbar):
    """``template_angles`` (+ ``tiles``): the stream's templates are exactly the views detection renders for this CT
    with a network trained on tiles (same poses as ``templates.build_templates``, every tile of a long CT
    included), so preparation can train on what inference uses; a batch takes the views of one tile."""
    from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics
    from RayEmbRegistrationLib.detection.templates import inference_template_angles, template_isocenters, tiled_template_poses
    from RayEmbRegistrationLib.training.stream import DRRStream
    from RayEmbRegistrationLib.inputs.volume import load_ct

    angles = inference_template_angles(4)
    lumbar = load_ct(lumbar)
    for ct in (lumbar, sample_ct):  # one tile (a lumbar crop), several (the pelvis–abdomen CT)
        s = DRRStream([ct], size=32, voxel_mm=6.0, pool=2, renew=0, n_points=256, seed=0, template_angles=angles,
                      tiles=True)
        sh = s.shards[0]
        poses, tiles = tiled_template_poses(angles, template_isocenters(ct, angles))
        assert sh["templates"].shape == (len(poses), 32, 32)
        want = [Camera(Intrinsics.deepfluoro(32), T).projection_matrix for T in poses]
        np.testing.assert_allclose(sh["template_P"], np.stack(want), rtol=1e-9, atol=1e-9)
        assert ("template_tiles" in sh) == (tiles.max() > 0)
        if ct is lumbar:
            assert len(poses) == 4
            b = s.batch(np.random.default_rng(0), n_queries=1, n_templates=4, n_points=8)
            assert sorted(b["template_idx"].tolist()) == [0, 1, 2, 3]
        else:
            assert tiles.max() > 0
            picked = set()
            for k in range(30):
                b = s.batch(np.random.default_rng(k), n_queries=2, n_templates=4, n_points=8)
                t = b["template_idx"]
                assert len(set(tiles[t].tolist())) == 1  # one tile's views
                picked.add(int(tiles[t][0]))
            assert len(picked) > 1  # more than the centroid tile is trained


def test_finetune_on_the_fly_reports_progress_and_renders_no_cached_training_set(lumbar, tmp_path):
    from RayEmbRegistrationLib.detection.model import save_model
    from RayEmbRegistrationLib.training.finetune import finetune

    torch.manual_seed(0)
    base = tmp_path / "base.safetensors"
    save_model(build_model(ModelConfig(dim=8, widths=(8, 16, 16), image_size=S, voxel_mm=5.0)), base)
    seen = []
    rep = finetune(lumbar, tmp_path / "ft", model_path=base, seconds=3.0, n_eval_queries=2, bar=False,
                   log=lambda m: None, on_the_fly=True, poses="clinical", progress=lambda f, m: seen.append(f))
    assert rep["data"] == "on the fly (clinical poses)" and rep["steps"] >= 1
    assert not (tmp_path / "ft" / "data_train").exists() and (tmp_path / "ft" / "data_eval").exists()
    assert seen and seen == sorted(seen) and seen[-1] == 1.0  # monotone progress to the end


def test_variant_stream_state_depends_only_on_seed_and_step(lumbar):
    """The general network's on-the-fly data: synthetic patients replaced every few steps, and the live set at
    step k rebuilt from scratch equals the one reached by stepping there (what an exact resume needs)."""
    from RayEmbRegistrationLib.training.stream import VariantStream
    from RayEmbRegistrationLib.inputs.volume import load_ct

    ct = load_ct(lumbar)
    kw = dict(size=32, voxel_mm=6.0, slots=2, variant_every=2, queries=2, n_points=64, seed=4)
    walked = VariantStream([ct, ct], **kw)
    for k in range(6):
        walked.at_step(k)
    assert [s["generation"] for s in walked.shards] == [2, 3] and list(walked.generations(5)) == [2, 3]
    jumped = VariantStream([ct, ct], **kw)
    jumped.at_step(5)
    assert jumped.rendered < walked.rendered  # only the live generations were made
    for a, b in zip(walked.shards, jumped.shards):
        for key in ("templates", "queries", "query_P", "template_P", "points"):
            assert np.array_equal(a[key], b[key]), key
    b = walked.batch(np.random.default_rng(0), n_queries=2, n_templates=4, n_points=10)
    assert b["query"].shape == (2, 32, 32) and b["templates"].shape == (4, 32, 32) and b["valid"].any()
    other = VariantStream([ct, ct], **{**kw, "seed": 5})
    other.at_step(5)
    assert not np.array_equal(other.shards[0]["queries"], walked.shards[0]["queries"])
    # workers=1: a separate process makes the coming generations; the live set is the same
    torch.set_num_threads(1)
    ahead = VariantStream([ct, ct], workers=1, **kw)
    try:
        for k in range(6):
            ahead.at_step(k)
        assert ahead._worker.proc.is_alive() and ahead.rendered == walked.rendered
        for a, b in zip(walked.shards, ahead.shards):
            assert a["generation"] == b["generation"]
            np.testing.assert_allclose(a["queries"], b["queries"], rtol=1e-5, atol=1e-6)
            for key in ("query_P", "template_P", "points"):
                assert np.array_equal(a[key], b[key]), key
    finally:
        ahead.close()
    assert ahead._worker is None


def test_training_on_the_fly_resumes_bit_for_bit(lumbar, tmp_path):
    """``rayemb train --ct``: two CPU steps in one go equal one step + a resume from the copied checkpoint."""
    import shutil

    from RayEmbRegistrationLib.training.stream import VariantStream
    from RayEmbRegistrationLib.inputs.volume import load_ct

    ct = load_ct(lumbar)
    stream = lambda: VariantStream([ct], size=S, voxel_mm=5.0, slots=1, variant_every=1, queries=2, n_points=64)  # noqa: E731
    kw = dict(batch_queries=1, n_templates=2, n_points=8, config=TINY_CFG, bar=False, val_every=10**9, seed=3,
              log=lambda m: None, ckpt_every=1, threads=1)
    train(stream(), tmp_path / "straight", steps=2, **kw)
    train(stream(), tmp_path / "first", steps=2, max_minutes=1e-9, **kw)
    shutil.copyfile(tmp_path / "first" / "last.pt", tmp_path / "committed.pt")
    logs = []
    train(stream(), tmp_path / "second", steps=2, resume_from=tmp_path / "committed.pt", **{**kw, "log": logs.append})
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "second" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 2 and a["data"] == b["data"] and "VariantStream" in a["data"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not any("other data" in m for m in logs)
    other = VariantStream([ct], size=S, voxel_mm=5.0, slots=1, variant_every=1, queries=3, n_points=64)
    train(other, tmp_path / "third", steps=3, resume_from=tmp_path / "committed.pt", **{**kw, "log": logs.append})
    assert any("other data" in m for m in logs)  # a resume on other data says so


def test_ledger_row_sums_the_segments_of_a_resumed_run(tiny_data, tmp_path):
    """The model card's ledger row comes from the run's own metrics (a resumed run appends a second segment)."""
    from RayEmbRegistrationLib.training.ledger import ledger_markdown, run_summary

    kw = dict(batch_queries=1, n_templates=2, n_points=8, config=TINY_CFG, bar=False, seed=3, log=lambda m: None,
              ckpt_every=1, threads=1, val_data=tiny_data, val_every=2)
    train(tiny_data, tmp_path / "run", steps=2, **kw)
    train(tiny_data, tmp_path / "run", steps=4, **kw)  # resumes from run/last.pt
    s = run_summary(tmp_path / "run")
    assert (s["first_step"], s["last_step"]) == (1, 4) and [c[0] for c in s["curve"]] == [2, 4]
    assert 0 < s["wall_hours"] < 1
    row = ledger_markdown(s, "1 CPU thread", previous_hours=1.5)
    assert row.startswith(f"| {tmp_path / 'run'} | 1 CPU thread | 1–4 |") and "2: " in row


def test_train_cli_streams_at_a_chosen_size_with_the_inference_templates(lumbar):
    """``rayemb train --ct ... --size 32 --inference-templates``: the general network's stream renders at that
    size with the 4 template views detection uses (recorded in the stream's settings, so a resume checks them)."""
    import argparse

    from RayEmbRegistrationLib.detection.templates import inference_template_angles
    from RayEmbRegistrationLib.training.train import add_train_args, stream_from_args

    args = add_train_args(argparse.ArgumentParser()).parse_args(
        ["--ct", lumbar, "--out", "unused", "--size", "32", "--inference-templates", "--slots", "1", "--device", "cpu"])
    stream, specs = stream_from_args(args, args.size, 6.0, 2.0)
    assert specs == [lumbar] and stream.size == 32
    assert stream.describe()["templates"] == [list(a) for a in inference_template_angles(4)]
    stream.at_step(0)
    assert stream.shards[0]["templates"].shape == (4, 32, 32)


def test_extra_cts_are_never_trained_on_and_a_missing_one_names_its_fetch_script(monkeypatch, tmp_path):
    from RayEmbRegistrationLib.training import cts

    assert not set(cts.EXTRA_CTS) & set(cts.TRAINING_CTS)  # validation-only: not in any training set
    assert all(name in cts.TRAINING_CTS for name in cts.training_set())
    monkeypatch.setitem(cts.EXTRA_CTS, "pyradiomics:lung1", tmp_path / "lung1_image.nrrd")
    with pytest.raises(FileNotFoundError, match=r"scripts/get_extra_cts\.sh"):
        cts.resolve_ct_path("pyradiomics:lung1")
    (tmp_path / "lung1_image.nrrd").write_bytes(b"NRRD0004\n")
    assert cts.resolve_ct_path("pyradiomics:lung1") == tmp_path / "lung1_image.nrrd"


def test_export_writes_the_checkpoints_weights_and_refuses_a_corrupt_one(tiny_data, tmp_path):
    """``training.export``: a ``last.pt`` of a real (2-step) run → ``.safetensors`` that ``load_model`` reads
    (sha256 checked) with the checkpoint's weights, config and provenance; a checkpoint that no longer matches its
    sha256 manifest is refused, naming the file, and nothing is written."""
    import hashlib
    import json

    from RayEmbRegistrationLib.detection.model import load_model
    from RayEmbRegistrationLib.training.export import export_checkpoint, main

    train(tiny_data, tmp_path / "run", steps=2, batch_queries=1, n_templates=2, n_points=8, config=TINY_CFG,
          bar=False, val_every=10**9, seed=3, log=lambda m: None, ckpt_every=1, threads=1)
    ck = tmp_path / "run" / "last.pt"
    (tmp_path / "run" / "last.pt.sha256").write_text(hashlib.sha256(ck.read_bytes()).hexdigest() + "  last.pt\n")
    assert main([str(ck), str(tmp_path / "w.safetensors"), "--note", "test export"]) == 0
    m = load_model(tmp_path / "w.safetensors")
    state = torch.load(ck, weights_only=True)
    assert all(torch.equal(m.state_dict()[k], state["model"][k].float()) for k in state["model"])
    meta = json.loads((tmp_path / "w.json").read_text())
    assert meta["config"]["widths"] == list(TINY_CFG.widths) and meta["metadata"]["step"] == 2
    assert meta["metadata"]["note"] == "test export"
    assert meta["metadata"]["source_sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    raw = bytearray(ck.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # corrupt one byte: the manifest no longer matches
    ck.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="does not match its manifest"):
        export_checkpoint(ck, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
