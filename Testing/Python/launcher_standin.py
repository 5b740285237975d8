"""A stand-in for Slicer's ``PythonSlicer`` launcher (CTK AppLauncher): it runs the rest of its command line as a
child process and waits for it, so the worker is a grandchild of whoever started the launcher. Ending the launcher
(SIGTERM) does not end the worker — the situation ``training.prepare_job.PrepareJob`` is built for."""

import subprocess
import sys

if __name__ == "__main__":
    sys.exit(subprocess.call(sys.argv[1:]))
