"""The bad-input matrix: every case a user can get wrong, through ``rayemb`` itself (``cli.main`` or a real
process), asserting the exit status, the message, that no output was written and that the inputs are untouched.

Exit status (README, "Command line"): 0 ok, 2 bad input, 3 no usable network, 4 registration rejected,
130 interrupted, 143 terminated. No case may exit 0 with a wrong answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from RayEmbRegistrationLib.geometry.camera import Intrinsics
from RayEmbRegistrationLib.geometry.carm import carm_camera_from_world
from RayEmbRegistrationLib.cli import main
from RayEmbRegistrationLib.resources import SAMPLE_CT
from RayEmbRegistrationLib.rendering.simulate import simulate_xray
from RayEmbRegistrationLib.inputs.volume import CTVolume, save_ct
from RayEmbRegistrationLib.inputs.xray import save_xray

REPO = Path(__file__).resolve().parents[2]


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def inputs(sample_ct, tmp_path_factory):
    """A simulated 128² X-ray of the sample CT with its sidecar, a geometry file, a fiducial file."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("inputs")
    intr = Intrinsics.deepfluoro(128)
    T = carm_camera_from_world(5, -5, 720, sample_ct.center_ras)
    save_xray(simulate_xray(sample_ct, intr, T, 3), intr, d / "xray.tif")
    (d / "geometry.json").write_text(json.dumps(intr.to_dict()))
    c = sample_ct.center_ras
    (d / "points.csv").write_text(f"label,r,a,s\na,{c[0]},{c[1]},{c[2]}\nfar,{c[0] + 900},{c[1]},{c[2]}\n")
    (d / "empty.png").write_bytes(b"")
    return {"dir": d, "ct": SAMPLE_CT, "xray": d / "xray.tif", "geometry": d / "geometry.json",
            "points": d / "points.csv", "T": T, "empty": d / "empty.png"}


def _run(args, inputs, capsys, out: Path | None = None) -> tuple[int, str]:
    """main(args) → (exit status, stderr); asserts the inputs are unchanged and, if ``out``, no result in it."""
    watched = [inputs["ct"], inputs["xray"], Path(str(inputs["xray"]) + ".json"), inputs["geometry"], inputs["points"]]
    before = [_sha(p) for p in watched]
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert [_sha(p) for p in watched] == before, "an input file was modified"
    if out is not None and Path(out).is_dir():
        left = [p.name for p in Path(out).iterdir()]
        assert not any(n.endswith(".json") or n.endswith(".png") or n.endswith(".mrb") or n.startswith(".rayemb-tmp")
                       for n in left), left
    return rc, err


def _register(inputs, tmp_path, *extra):
    return ["register", "--ct", inputs["ct"], "--xray", inputs["xray"], "--out", tmp_path / "out", "--quiet",
            "--device", "cpu", *extra]


@pytest.mark.parametrize("extra, flag, words", [
    (["--ransac-threshold", "0"], "--ransac-threshold 0", "> 0"),
    (["--ransac-threshold", "-2"], "--ransac-threshold -2", "> 0"),
    (["--bone-keep", "0"], "--bone-keep 0", "≥ 1"),
    (["--bone-keep", "-3"], "--bone-keep -3", "≥ 1"),
    (["--bone-candidates", "0"], "--bone-candidates 0", "≥ 1"),
    (["--pnp-poses", "0"], "--pnp-poses 0", "≥ 1"),
    (["--pnp-poses", "11"], "--pnp-poses 11", "≤ 10"),
    (["--refine-levels", "0"], "--refine-levels 0", "≥ 16"),
    (["--refine-levels", "5000"], "--refine-levels 5000", "≤ 1024"),
    (["--refine-levels", "32", "64", "--refine-iterations", "1", "2", "3"], "--refine-iterations 1 2 3", "one per level"),
    (["--refine-iterations", "0"], "--refine-iterations 0", "≥ 1"),
])
def test_invalid_options_are_refused_up_front(inputs, tmp_path, capsys, extra, flag, words):
    t = time.perf_counter()
    rc, err = _run(_register(inputs, tmp_path, *extra), inputs, capsys, tmp_path / "out")
    assert rc == 2 and flag in err and words in err, err
    assert time.perf_counter() - t < 20, "the option must be refused before any work"


def test_output_location_is_checked_before_any_work(inputs, tmp_path, capsys):
    a_file = tmp_path / "result.txt"
    a_file.write_text("keep me")
    t = time.perf_counter()
    rc, err = _run(["register", "--ct", inputs["ct"], "--xray", inputs["xray"], "--out", a_file, "--quiet"], inputs, capsys)
    assert rc == 2 and "is a file" in err and a_file.read_text() == "keep me"
    rc, err = _run(["register", "--ct", inputs["ct"], "--xray", inputs["xray"], "--out", a_file / "sub", "--quiet"],
                   inputs, capsys)
    assert rc == 2 and "cannot write results" in err and "Errno" not in err
    rc, err = _run(["render", "--ct", inputs["ct"], "--carm-angles", "0", "0", "700", "--geometry", inputs["geometry"],
                    "--out", tmp_path], inputs, capsys)
    assert rc == 2 and "is a folder" in err
    assert time.perf_counter() - t < 10


def test_empty_xray_file_is_a_clear_error(inputs, tmp_path, capsys):
    for cmd in (_register(inputs, tmp_path, "--geometry", inputs["geometry"]),
                ["detect", "--ct", inputs["ct"], "--xray", inputs["xray"], "--points", inputs["points"], "--out",
                 tmp_path / "out", "--quiet"]):
        cmd[cmd.index("--xray") + 1] = inputs["empty"]
        rc, err = _run(cmd, inputs, capsys, tmp_path / "out")
        assert rc == 2 and "empty (0 bytes)" in err and "Traceback" not in err


def test_tiny_ct_is_refused(inputs, tmp_path, capsys):
    tiny = tmp_path / "tiny.nii.gz"
    save_ct(CTVolume(np.full((2, 2, 2), 1000.0, np.float32), np.diag([50.0, 50.0, 50.0, 1.0]), "tiny"), tiny)
    cmd = _register(inputs, tmp_path)
    cmd[cmd.index("--ct") + 1] = tiny
    rc, err = _run(cmd, inputs, capsys, tmp_path / "out")
    assert rc == 2 and "at least 8 voxels" in err


@pytest.mark.parametrize("pose, words", [
    (np.zeros((4, 4)), "rigid"),
    (np.diag([1.0, 1.0, -1.0, 1.0]), "rigid"),
    (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.1, 0, 0, 1.0]]), "last row"),
    (None, "behind the X-ray source"),
])
def test_render_refuses_impossible_poses(inputs, tmp_path, capsys, pose, words):
    if pose is None:  # the CT 3 m behind the source
        pose = inputs["T"].copy()
        pose[2, 3] -= 3000.0
    p = tmp_path / "pose.json"
    p.write_text(json.dumps(np.asarray(pose).tolist()))
    out = tmp_path / "drr.tif"
    rc, err = _run(["render", "--ct", inputs["ct"], "--pose", p, "--geometry", inputs["geometry"], "--out", out],
                   inputs, capsys)
    assert rc == 2 and words in err and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_render_on_cuda_without_a_gpu(inputs, tmp_path, capsys):
    out = tmp_path / "drr.tif"
    rc, err = _run(["render", "--ct", inputs["ct"], "--carm-angles", "0", "0", "700", "--geometry", inputs["geometry"],
                    "--out", out, "--device", "cuda"], inputs, capsys)
    assert rc == 2 and "no CUDA GPU" in err and not out.exists()


def test_finetune_bad_inputs(inputs, sample_ct, tmp_path, capsys):
    out = tmp_path / "ft"
    rc, err = _run(["finetune", "--ct", inputs["ct"], "--out", out, "--seconds", "-5"], inputs, capsys)
    assert rc == 2 and "--seconds -5" in err and not out.exists()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not weights")
    rc, err = _run(["finetune", "--ct", inputs["ct"], "--out", out, "--seconds", "5", "--model", bad], inputs, capsys)
    assert rc == 3 and not (out / "run").exists()  # the same status as register for a bad network
    soft = tmp_path / "soft.nii.gz"
    save_ct(CTVolume(np.clip(sample_ct.hu, None, 100.0), sample_ct.ijk_to_ras, "soft"), soft)
    rc, err = _run(["finetune", "--ct", soft, "--out", out, "--seconds", "5"], inputs, capsys)
    assert rc == 2 and "no bone" in err and not (out / "data_eval").exists()


def test_detect_flags_points_outside_the_ct(inputs, tmp_path, capsys):
    out = tmp_path / "det"
    rc, _ = _run(["detect", "--ct", inputs["ct"], "--xray", inputs["xray"], "--points", inputs["points"], "--out", out,
                  "--quiet", "--device", "cpu"], inputs, capsys)
    assert rc == 0
    pts = {p["label"]: p for p in json.loads((out / "detections.json").read_text())["points"]}
    assert pts["far"]["status"] == "outside_ct" and pts["far"]["detected_px"] is None and pts["far"]["confidence"] == 0
    assert pts["a"]["status"] == "detected" and len(pts["a"]["detected_px"]) == 2


def test_xray_of_another_anatomy_is_never_accepted(inputs, shared_data, tmp_path, capsys):
    """A pelvis X-ray registered to a head CT: an error or a rejection, never an exit 0 that looks like success."""
    out = tmp_path / "out"
    cmd = _register(inputs, tmp_path)
    cmd[cmd.index("--ct") + 1] = shared_data / "ct" / "head_invesalius.nii.gz"
    rc = main([str(a) for a in cmd])
    err = capsys.readouterr().err
    if rc == 0:
        verdict = json.loads((out / "registration.json").read_text())["verdict"]["status"]
        assert verdict == "uncertain" and "UNCERTAIN" in err, verdict  # a result that may be wrong says so
    else:
        assert rc in (2, 4), (rc, err)
        if rc == 4:
            assert json.loads((out / "registration.json").read_text())["verdict"]["status"] == "rejected"
            assert "REJECTED" in err
        else:
            assert not (out / "registration.json").exists()


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_run_leaves_nothing_half_written(inputs, tmp_path, sig, status):
    """A real ``rayemb register`` process stopped mid-run (once its progress shows the work has begun)."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "RayEmbRegistrationLib.cli", *map(str, _register(inputs, tmp_path))]
    cmd.remove("--quiet")  # progress lines on stderr (not a terminal: one line per 10 %) tell when work runs
    # A test run started in the background of a non-interactive shell (`scripts/test.sh &`) inherits SIGINT ignored,
    # and Python then installs no Ctrl-C handler in the child: give the child the default disposition, as a
    # terminal would.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen, t0 = [], time.time()
    while time.time() - t0 < 120:
        line = proc.stderr.readline()
        seen.append(line)
        if not line or "register:" in line and "%" in line and not line.startswith("register:   0%"):
            break
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == status, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "nothing half written" in err
    left = [p.name for p in out.iterdir()] if out.exists() else []
    assert "registration.json" not in left and not any(n.startswith(".rayemb-tmp") for n in left), left


def test_missing_or_corrupt_network_is_exit_3(inputs, tmp_path, capsys):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    for model in (tmp_path / "none.safetensors", bad):
        rc, err = _run(_register(inputs, tmp_path, "--geometry", inputs["geometry"], "--model", model), inputs, capsys,
                       tmp_path / "out")
        assert rc == 3 and ("network" in err.lower() or "model" in err.lower()), (rc, err)


def test_training_commands_refuse_missing_data(inputs, tmp_path, capsys):
    rc, err = _run(["train", "--data", tmp_path / "nothing", "--out", tmp_path / "run", "--steps", "1"], inputs, capsys)
    assert rc == 2 and "Traceback" not in err and not (tmp_path / "run" / "model.safetensors").exists(), err
