"""The pre-operative step (``prepare.py``) on the real sample CT with a tiny network and a tiny budget: the folder
contract (complete or absent), the budget, cancel, the hash lookup, the readiness report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from RayEmbRegistrationLib.options import RegistrationOptions
from RayEmbRegistrationLib.training.prepare import PreparedCT, find_prepared, prepare, use_prepared
from RayEmbRegistrationLib.progress import Cancelled
from RayEmbRegistrationLib.inputs.volume import CTVolume


@pytest.fixture(scope="module")
def prepared(sample_ct, tiny_weights, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("prep") / "pelvis"
    seen = []
    prep = prepare(sample_ct, out, minutes=0.4, model_path=tiny_weights, n_selfcheck=2,
                   progress=lambda f, m: seen.append((f, m)), log=lambda m: None)
    return prep, seen


def test_the_folder_is_complete_and_reports_readiness(prepared, sample_ct):
    prep, seen = prepared
    p = prep.path
    assert {f.name for f in p.iterdir()} >= {"model.safetensors", "model.safetensors.sha256", "model.json",
                                             "templates", "readiness.json", "readiness.png"}
    assert len(list((p / "templates").glob("templates_*.npz"))) == 1
    assert not list(p.parent.glob(".*rayemb-tmp*"))  # no temporary folder left
    r = json.loads((p / "readiness.json").read_text())
    for k in ("median_px", "p90_px", "within_3px"):
        assert np.isfinite(r["heldout_before"][k]) and np.isfinite(r["heldout_after"][k])
    sc = r["self_check"]
    assert 1 <= sc["n"] <= 2 and 0 <= sc["success_10mm_%"] <= 100 and len(sc["cases"]) == sc["n"]
    assert all(isinstance(c["rescue"], bool) for c in sc["cases"])  # whether the budget let the rescue search run
    assert r["training"]["fresh_drrs"] > 0 and r["training"]["steps"] >= 1 and r["model_sha256"] != r["base_sha256"]
    from RayEmbRegistrationLib.training.prepare import render_workers

    assert r["training"]["render_processes"] == render_workers("cpu")  # none: Joseph renders in ~10 ms
    assert r["minutes_spent"] * 60 <= r["minutes_budget"] * 60 + 15  # the budget (and a little fixed overhead)
    fr = [f for f, _ in seen]
    assert all(b >= a - 1e-9 for a, b in zip(fr, fr[1:])), [(round(f, 3), m[:30]) for f, m in seen if True][:60]
    assert fr == sorted(fr) and fr[-1] == 1.0 and any(m.startswith("fine-tuning") for _, m in seen)
    assert any(m.startswith("pose regression") for _, m in seen)


def test_the_folder_carries_the_cts_pose_regression_network_with_its_sha256(prepared, sample_ct, tmp_path):
    """The pose-regression network is in the folder, named by ``readiness.json`` with its sha256 and held-out error;
    ``use_prepared`` hands it to the registration; a changed file is refused before it is used."""
    import shutil

    from RayEmbRegistrationLib.detection.model import sha256_file
    from RayEmbRegistrationLib.errors import ModelUnavailable
    from RayEmbRegistrationLib.registration.pipeline import Registrar
    from RayEmbRegistrationLib.training.prepare import REGRESSION_MODEL

    prep, _ = prepared
    entry = prep.readiness["pose_regression"]
    assert entry["file"] == REGRESSION_MODEL and entry["steps"] >= 1
    assert entry["sha256"] == sha256_file(prep.path / REGRESSION_MODEL)
    assert (prep.path / (REGRESSION_MODEL + ".sha256")).read_text().split()[0] == entry["sha256"]
    assert set(entry["heldout"]) == {"project", "diffdrr", "physics"}
    assert any("pose regression" in line for line in prep.summary_lines())
    o = use_prepared(RegistrationOptions(initial="regression"), sample_ct, prep.path)
    assert o.regression_path == str(prep.regression_path) == str(prep.path / REGRESSION_MODEL)
    # a copy of the folder whose network was changed: refused (ModelUnavailable, exit 3), nothing registered
    bad = tmp_path / "bad"
    shutil.copytree(prep.path, bad)
    data = bytearray((bad / REGRESSION_MODEL).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / REGRESSION_MODEL).write_bytes(bytes(data))
    r = Registrar(sample_ct, use_prepared(RegistrationOptions(initial="regression"), sample_ct, bad))
    with pytest.raises(ModelUnavailable, match="sha256 mismatch"):
        r.pose_regressor()


def test_the_folder_is_found_by_the_cts_content_and_refuses_another_ct(prepared, sample_ct, monkeypatch):
    prep, _ = prepared
    o = use_prepared(RegistrationOptions(), sample_ct, prep.path)
    assert o.model_path == str(prep.model_path) and o.detection.template_cache == str(prep.templates_dir)
    other = CTVolume(sample_ct.hu + 1.0, sample_ct.ijk_to_ras, "other")
    with pytest.raises(ValueError, match="prepared for another CT"):
        PreparedCT.open(prep.path, other)
    # the cache: <root>/<first 16 hex of the CT hash>
    from RayEmbRegistrationLib.detection.templates import ct_hash

    root = prep.path.parent / "cache"
    (root).mkdir()
    import shutil

    shutil.copytree(prep.path, root / ct_hash(sample_ct)[:16])
    monkeypatch.setenv("RAYEMB_CACHE", str(prep.path.parent / "cache_parent"))
    assert find_prepared(sample_ct, root).path == root / ct_hash(sample_ct)[:16]
    assert find_prepared(other, root) is None
    with pytest.raises(ValueError, match="no prepared folder"):
        use_prepared(RegistrationOptions(), other, "auto")


def test_the_registrar_uses_the_folders_templates(prepared, sample_ct):
    from RayEmbRegistrationLib.registration.pipeline import Registrar

    prep, _ = prepared
    r = Registrar(sample_ct, use_prepared(RegistrationOptions(device="cpu"), sample_ct, prep.path))
    before = {f: f.stat().st_mtime_ns for f in prep.templates_dir.iterdir()}
    det = r.detector()
    assert det.templates.images.shape[-1] == 64
    assert {f: f.stat().st_mtime_ns for f in prep.templates_dir.iterdir()} == before  # read, not rebuilt


def test_cancel_before_training_leaves_no_folder(sample_ct, tiny_weights, tmp_path):
    out = tmp_path / "p"
    with pytest.raises(Cancelled):
        prepare(sample_ct, out, minutes=0.2, model_path=tiny_weights, n_selfcheck=1, cancel=lambda: True,
                log=lambda m: None)
    assert not out.exists() and not list(tmp_path.glob(".*rayemb-tmp*"))


def test_cancel_during_training_keeps_the_weights_and_completes_the_folder(sample_ct, tiny_weights, tmp_path):
    state = {"training": 0}

    def progress(f, m):
        if m.startswith("fine-tuning"):
            state["training"] += 1

    out = tmp_path / "p"
    prep = prepare(sample_ct, out, minutes=0.3, model_path=tiny_weights, n_selfcheck=1, progress=progress,
                   cancel=lambda: state["training"] >= 3, log=lambda m: None)
    r = prep.readiness
    assert "stopped early" in r["interrupted"] and (out / "model.safetensors").is_file()
    # the user stopped the training before the pose-regression network's turn: the folder has none
    assert prep.regression_path is None and r["pose_regression"] is None


def test_bad_budget_and_ct_without_bone(sample_ct, tiny_weights, tmp_path):
    with pytest.raises(ValueError, match="--minutes"):
        prepare(sample_ct, tmp_path / "a", minutes=0, model_path=tiny_weights)
    for share in (1.0, -0.1):
        with pytest.raises(ValueError, match="--regression-share"):
            prepare(sample_ct, tmp_path / "a", minutes=1, model_path=tiny_weights, regression_share=share)
    assert not (tmp_path / "a").exists()
    soft = CTVolume(np.clip(sample_ct.hu, None, 100.0), sample_ct.ijk_to_ras, "soft")
    with pytest.raises(ValueError, match="no bone"):
        prepare(soft, tmp_path / "b", minutes=1, model_path=tiny_weights)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_text("precious")
    with pytest.raises(ValueError, match="other files in it"):
        prepare(sample_ct, mine, minutes=1, model_path=tiny_weights)
    assert (mine / "thesis.docx").read_text() == "precious"


def test_separate_process_reports_progress_and_stops_early_on_sigterm(sample_ct_path, tiny_weights, tmp_path):
    """What the Slicer module does with qt.QProcess: run ``prepare_command`` in a child process, read its progress
    lines (``parse_progress_line``), press Stop (SIGTERM) during the training — the training stops early and the
    folder is still completed (exit 0)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from RayEmbRegistrationLib.cli.common import parse_progress_line
    from RayEmbRegistrationLib.training.prepare import prepare_command

    out = tmp_path / "prepared"
    cmd = prepare_command(sample_ct_path, out, 0.5, sys.executable, model=tiny_weights, device="cpu")
    cmd += ["--self-check", "1"]
    assert cmd[1:5] == ["-m", "RayEmbRegistrationLib.cli", "prepare", "--ct"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen, t0, stopped = [], time.time(), False
    while time.time() - t0 < 180:
        line = proc.stderr.readline()
        if not line:
            break
        p = parse_progress_line(line)
        if p is not None:
            seen.append(p)
            if not stopped and p[2].startswith("fine-tuning"):
                proc.send_signal(signal.SIGTERM)
                stopped = True
    out_text, _ = proc.communicate(timeout=180)
    assert stopped and proc.returncode == 0, (proc.returncode, seen[-3:])
    assert all(d == "prepare" and 0 <= f <= 1 for d, f, _ in seen)
    r = json.loads((out / "readiness.json").read_text())
    assert "stopped early" in r["interrupted"] and "prepared-CT folder" in out_text
    if sys.platform.startswith("linux"):  # no render process outlives the run (a forked one has the same command line)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from clickthrough import processes_mentioning

        left = processes_mentioning(str(out))
        assert not left, left
    assert parse_progress_line("register:  40%  refine") == ("register", 0.4, "refine")
    assert parse_progress_line("some other line") is None
