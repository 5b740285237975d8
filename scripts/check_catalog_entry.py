"""Run 3D Slicer's own catalog checks (``scripts/check_description_files.py`` of a Slicer/ExtensionsIndex checkout)
on this extension's catalog entry ``RayEmbRegistration.json``, on a machine without network access.

The checker is run unchanged, in a temporary copy of the index's description files with this entry added; only
its network calls are served locally: ``git clone <scm_url>`` clones this repository's committed tree, the icon
and screenshot URLs under the entry's repository are answered from the files of this tree (404 when a file is
missing), and the schema URL from ``--schemas`` (a Slicer checkout's ``Schemas/`` folder). The GitHub-topics
check needs GitHub's API for the published repository and is reported as not run.

    .venv/bin/python -m pip install -c requirements/constraints.txt requests jsonschema   # the checker's imports
    .venv/bin/python scripts/check_catalog_entry.py PATH/TO/ExtensionsIndex --schemas PATH/TO/Slicer/Schemas
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "RayEmbRegistration.json"


class _Response:
    def __init__(self, status: int, body: bytes, content_type: str, url: str) -> None:
        self.status_code, self.content, self.text = status, body, body.decode("utf-8", "replace")
        self.headers, self.url = {"Content-Type": content_type}, url

    def raise_for_status(self) -> None:
        import requests

        if self.status_code >= 400:
            raise requests.HTTPError(f"{self.status_code} for {self.url}")

    def json(self):
        return json.loads(self.text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index", type=Path, help="a checkout of Slicer/ExtensionsIndex")
    ap.add_argument("--schemas", type=Path, required=True, help="a Slicer checkout's Schemas/ folder")
    args = ap.parse_args()
    checker_path = args.index / "scripts" / "check_description_files.py"
    if not checker_path.is_file():
        ap.error(f"{checker_path} not found: give the root of an ExtensionsIndex checkout")

    spec = importlib.util.spec_from_file_location("check_description_files", checker_path)
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)

    entry = json.loads(ENTRY.read_text())
    scm_url = entry["scm_url"]
    owner_repo = scm_url.split("github.com/")[1].removesuffix(".git")
    raw_prefix = f"https://raw.githubusercontent.com/{owner_repo}/{entry.get('scm_revision', 'main')}/"
    schema_prefix = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"

    def get(url, *a, **kw):
        import requests

        if url.startswith(raw_prefix):
            path = REPO / url[len(raw_prefix):]
            if not path.is_file():
                return _Response(404, b"not found", "text/plain", url)
            kind = {".png": "image/png", ".jpg": "image/jpeg", ".gif": "image/gif"}.get(path.suffix.lower(), "text/plain")
            return _Response(200, path.read_bytes(), kind, url)
        if url.startswith(schema_prefix):
            path = args.schemas / url[len(schema_prefix):]
            if path.is_file():
                return _Response(200, path.read_bytes(), "application/json", url)
        raise requests.ConnectionError(f"offline: {url} is not served locally")

    real_run = subprocess.run

    def run(cmd, *a, **kw):
        if list(cmd[:2]) == ["git", "clone"] and scm_url in cmd:
            cmd = [str(REPO) if c == scm_url else c for c in cmd]
            cmd = [c for c in cmd if c not in ("--depth", "1")]
        return real_run(cmd, *a, **kw)

    checker.requests.get = get
    checker.subprocess.run = run
    checker.check_git_repository_topics = lambda name, metadata: print(
        "  (GitHub topics check not run offline: it reads the published repository's topics from GitHub's API; "
        "the repository needs the topic '3d-slicer-extension')")

    with tempfile.TemporaryDirectory(prefix="rayemb-catalog-") as tmp:
        for f in args.index.glob("*.json"):
            shutil.copy2(f, tmp)
        shutil.copy2(ENTRY, tmp)
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            sys.argv = ["check_description_files.py", ENTRY.name]
            return int(checker.main())
        finally:
            os.chdir(cwd)


if __name__ == "__main__":
    raise SystemExit(main())
