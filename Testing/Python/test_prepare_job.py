"""``training.prepare_job.PrepareJob``: a preparation started as the Slicer module starts it — through a launcher
process (``launcher_standin.py``, like ``PythonSlicer``) — is stopped by its stop file with the folder completed, or
killed as a whole process tree with nothing left behind; its output is read through a file, lines completed across
reads. Real ``rayemb prepare`` runs on the bundled sample CT with a tiny network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from RayEmbRegistrationLib.training.prepare import prepare_command
from RayEmbRegistrationLib.training.prepare_job import LineBuffer, PrepareJob, stop_requested

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from clickthrough import processes_mentioning  # noqa: E402  (the one /proc scan of the tests)
LIB_PARENT = HERE.parents[1] / "RayEmbRegistration"
LAUNCHER = HERE / "launcher_standin.py"


def _job(sample_ct_path, tiny_weights, out, minutes=0.6) -> PrepareJob:
    cmd = prepare_command(sample_ct_path, out, minutes, sys.executable, model=tiny_weights, device="cpu")
    cmd = [sys.executable, str(LAUNCHER), *cmd, "--self-check", "1"]
    env = {"PYTHONPATH": os.pathsep.join([str(LIB_PARENT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    return PrepareJob(cmd, out, env=env)


def _run_until_training(job: PrepareJob, timeout_s: float = 240.0) -> list:
    import time

    seen, t0 = [], time.time()
    while time.time() - t0 < timeout_s:
        u = job.poll()
        if u.progress:
            seen.append(u.progress)
            if u.progress[1].startswith("fine-tuning"):
                return seen
        assert not u.finished, (u.returncode, job.outcome())
        time.sleep(0.2)
    raise AssertionError(f"no training progress within {timeout_s} s: {seen[-3:]}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process listing through /proc")
def test_stop_file_reaches_the_worker_behind_a_launcher_and_the_folder_is_completed(sample_ct_path, tiny_weights,
                                                                                      tmp_path):
    out = tmp_path / "prepared"
    job = _job(sample_ct_path, tiny_weights, out).start()
    try:
        seen = _run_until_training(job)
        assert all(0.0 <= f <= 1.0 for f, _ in seen)
        job.stop()
        assert job.wait(240), "the worker did not end after the stop file appeared"
        status, text = job.outcome()
        assert (status, job.returncode) == ("prepared", 0), text
        readiness = json.loads((out / "readiness.json").read_text())
        assert "stopped early" in readiness["interrupted"]
        assert not processes_mentioning(str(out)), "a process of the preparation outlived it"
        assert not list(tmp_path.glob(".prepared.rayemb-tmp-*"))
    finally:
        job.close()
    assert not job.log_path.exists() and not job.stop_file.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process listing through /proc")
def test_kill_ends_launcher_worker_and_renderers_and_leaves_no_folder(sample_ct_path, tiny_weights, tmp_path):
    out = tmp_path / "prepared"
    job = _job(sample_ct_path, tiny_weights, out, minutes=2.0).start()
    try:
        _run_until_training(job)
        assert len(processes_mentioning(str(out))) >= 2, "expected the launcher and the worker"
        job.kill()
        assert not job.running
        assert not processes_mentioning(str(out)), "a process of the preparation survived the kill"
        assert job.outcome()[0] == "stopped"
        assert not out.exists() and not list(tmp_path.glob(".prepared.rayemb-tmp-*"))
    finally:
        job.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process listing through /proc")
def test_ending_only_the_launcher_leaves_the_worker_running(sample_ct_path, tiny_weights, tmp_path):
    """Why the stop file and the tree kill exist: SIGTERM to the launcher (QProcess.terminate) ends the launcher
    only."""
    out = tmp_path / "prepared"
    job = _job(sample_ct_path, tiny_weights, out, minutes=2.0).start()
    try:
        _run_until_training(job)
        os.kill(job.pid, 15)
        job._proc.wait(10)
        assert processes_mentioning(str(out)), "the worker ended with its launcher"
    finally:
        job.returncode = None  # the launcher is gone, its process group is not: kill() still ends the worker
        job.kill()
        job.close()
    assert not processes_mentioning(str(out))


def test_a_program_that_cannot_start_is_a_clear_error(tmp_path):
    job = PrepareJob([str(tmp_path / "no-such-python"), "-m", "x"], tmp_path / "out")
    with pytest.raises(OSError, match="could not start the preparation"):
        job.start()


def test_lines_split_across_reads_are_completed():
    buf = LineBuffer()
    assert buf.feed(b"prepare:  4") == []
    assert buf.feed(b"0%  fine-tuning\nnext ") == ["prepare:  40%  fine-tuning"]
    assert buf.feed(b"line\r\n") == ["next line"]
    assert buf.feed("é".encode()[:1]) == [] and buf.feed("é".encode()[1:] + b"\n") == ["é"]
    assert buf.feed(b"tail") == [] and buf.flush() == ["tail"] and buf.flush() == []


def test_the_worker_stops_when_its_gui_is_gone(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert stop_requested(None, p.pid) is (os.name == "posix")
    assert stop_requested(None, os.getpid()) is False
    (tmp_path / "stop").write_text("")
    assert stop_requested(str(tmp_path / "stop"), None) is True
    assert stop_requested(str(tmp_path / "absent"), None) is False
