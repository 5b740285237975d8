"""A ``rayemb prepare`` run in a child process that a GUI starts, watches, stops and, as a last resort, kills.

Owns: ``PrepareJob`` (start, poll progress, stop, kill the process tree, the outcome) and ``LineBuffer``.

Why a job object and not a bare ``QProcess``: inside 3D Slicer the program is ``PythonSlicer``, a launcher whose
child (``python-real``) does the work, so ending the launcher leaves the worker running; on Windows a console
program ignores ``terminate()``. The job therefore

* asks the worker itself to stop through a **stop file** it polls before every training step (``--stop-file``;
  the training stops early, the self-check still completes the folder, exit 0) — the same on every platform,
  through any number of launcher levels;
* tells the worker the GUI's process id (``--watch-pid``, POSIX): a worker whose GUI is gone stops as if asked;
* kills the **whole process tree** as the last resort (POSIX: the child is started as the leader of a new process
  group, which the launcher, the worker and its render processes share; Windows: ``taskkill /T /F``) and then
  removes the half-written temporary folder that ``prepare`` leaves beside the output after a kill;
* sends the child's output to a log file, not a pipe: a GUI that stops reading (or closes) can never block or kill
  the worker through a full or closed pipe, and a progress line cut across two reads is completed by
  ``LineBuffer`` before it is parsed.

Qt-free and polled (``poll()`` from a GUI timer), so the same object is exercised headlessly by the tests with a
launcher-like parent process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LineBuffer", "PrepareJob", "JobUpdate"]


class LineBuffer:
    """Bytes in, complete text lines out: a line split across two reads is returned once it is complete."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[str]:
        data = self._rest + data
        *lines, self._rest = data.split(b"\n")
        return [ln.decode("utf-8", "replace").rstrip("\r") for ln in lines]

    def flush(self) -> list[str]:
        """The last line if the stream ended without a newline."""
        rest, self._rest = self._rest, b""
        return [rest.decode("utf-8", "replace").rstrip("\r")] if rest.strip() else []


@dataclass
class JobUpdate:
    """What ``PrepareJob.poll`` saw since the previous call."""

    progress: tuple[float, str] | None = None   #: the newest (fraction, message), if any line came
    lines: list[str] = field(default_factory=list)  #: the other output lines (log messages, errors)
    finished: bool = False
    returncode: int | None = None


class PrepareJob:
    """One preparation in a child process (see the module docstring). ``command`` is ``prepare_command``'s list;
    ``out_dir`` its ``--out``. ``start()``, then ``poll()`` regularly; ``stop()`` asks the worker to stop the
    training early; ``kill()`` ends the process tree at once. ``outcome()`` describes how it ended."""

    def __init__(self, command: list[str], out_dir: str | os.PathLike, env: dict[str, str] | None = None,
                 work_dir: str | os.PathLike | None = None, owned_paths: tuple = ()) -> None:
        self.out_dir = Path(out_dir)
        self.owned_paths = [Path(p) for p in owned_paths]  #: removed by ``close()`` (e.g. the CT written for the job)
        self._work = Path(tempfile.mkdtemp(prefix="rayemb-prepare-job-", dir=work_dir))
        self.stop_file = self._work / "stop"
        self.log_path = self._work / "output.log"
        self.command = [*command, "--stop-file", str(self.stop_file)]
        if os.name == "posix":
            self.command += ["--watch-pid", str(os.getpid())]
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._offset = 0
        self._buffer = LineBuffer()
        self._tail: list[str] = []
        self.stop_requested = False
        self.killed = False
        self.returncode: int | None = None

    # --- lifetime ---------------------------------------------------------------------------------------------
    def start(self) -> "PrepareJob":
        """Start the child; ``OSError`` (e.g. the program does not exist) propagates with the command named."""
        kwargs: dict = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True  # its own process group: kill() reaches launcher, worker and renderers
        else:
            kwargs["creationflags"] = (getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
                                       | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in _finish)
        try:
            self._proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._log,
                                          stderr=subprocess.STDOUT, env=self.env, **kwargs)
        except OSError as exc:
            self._log.close()
            shutil.rmtree(self._work, ignore_errors=True)
            raise OSError(f"could not start the preparation ({self.command[0]}): {exc}") from exc
        return self

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self.returncode is None and self._proc.poll() is None

    def poll(self) -> JobUpdate:
        """New output since the last call (progress lines parsed) and whether the child has ended."""
        from ..cli.common import parse_progress_line

        update = JobUpdate()
        if self._proc is None:
            return update
        ended = self._proc.poll() is not None
        lines = self._read_new()
        if ended:
            lines += self._buffer.flush()
        for line in lines:
            parsed = parse_progress_line(line)
            if parsed is not None:
                update.progress = (parsed[1], parsed[2])
            elif line.strip():
                update.lines.append(line)
                self._tail = (self._tail + [line])[-20:]
        if ended and self.returncode is None:
            self.returncode = self._proc.returncode
            self._finish()
        update.finished = self.returncode is not None
        update.returncode = self.returncode
        return update

    def stop(self) -> None:
        """Ask the worker to stop training early (it still completes the folder); returns at once."""
        self.stop_requested = True
        try:
            self.stop_file.write_text("stop")
        except OSError:
            pass

    def kill(self, wait_s: float = 10.0) -> None:
        """End the whole process tree now (the last resort: the folder is not written) and remove the half-written
        temporary folder beside ``out_dir``. Waits up to ``wait_s`` for the child to be reaped."""
        if self._proc is None or self.returncode is not None:
            return
        self.killed = True
        if os.name == "posix":
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        else:
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(self._proc.pid)], capture_output=True, check=False)
        try:
            self._proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self.poll()
        for tmp in self.out_dir.parent.glob(f".{self.out_dir.name}.rayemb-tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def wait(self, timeout_s: float, interval_s: float = 0.2) -> bool:
        """Poll until the child ends or ``timeout_s`` passes; True if it ended."""
        t0 = time.time()
        while time.time() - t0 < timeout_s:
            if self.poll().finished:
                return True
            time.sleep(interval_s)
        return self.poll().finished

    def outcome(self) -> tuple[str, str]:
        """``(status, text)`` once ended: ``"prepared"`` (the folder is complete), ``"stopped"`` (stopped before the
        training had weights worth keeping, or killed: no folder), or ``"failed"`` with the end of its output."""
        from ..cli.common import EXIT_CANCELLED, EXIT_TERMINATED

        if self.returncode is None:
            return "running", ""
        if self.returncode == 0 and not self.killed:
            return "prepared", str(self.out_dir)
        if self.killed or (self.stop_requested and self.returncode in (EXIT_CANCELLED, EXIT_TERMINATED)):
            return "stopped", "stopped before the training had produced weights: no prepared folder was written"
        tail = "\n".join(self._tail[-8:])
        return "failed", f"rayemb prepare exited with status {self.returncode}:\n{tail}"

    def close(self) -> None:
        """Kill the child if it still runs, and remove the job's own files (stop file, log, ``owned_paths``)."""
        if self.running:
            self.kill()
        self._finish()
        shutil.rmtree(self._work, ignore_errors=True)
        for p in self.owned_paths:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    # --- internals --------------------------------------------------------------------------------------------
    def _read_new(self) -> list[str]:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        self._offset += len(data)
        return self._buffer.feed(data)

    def _finish(self) -> None:
        if self._log is not None and not self._log.closed:
            self._log.close()


def watch_pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (POSIX; elsewhere always True: the stop file is the way to stop)."""
    if os.name != "posix" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_requested(stop_file: str | None, watch_pid: int | None) -> bool:
    """The worker's side: has the GUI asked it to stop (stop file present), or is the GUI gone?"""
    if stop_file and os.path.exists(stop_file):
        return True
    return bool(watch_pid) and not watch_pid_alive(int(watch_pid))

