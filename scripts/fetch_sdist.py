"""Download one package's source distribution by name and version through pip's own index settings.

Usage: python scripts/fetch_sdist.py NAME VERSION DEST_DIR  → prints the path of the file written.

``pip download NAME==VERSION --no-binary NAME`` would do this, but it builds the package's metadata, and some sdists
report another version in their metadata than in their file name (pyradiomics 3.1.0's says 3.0.1a1), which pip then
refuses. This asks pip's package finder for the sdist of NAME at VERSION — the index, mirrors and proxies a user has
configured for pip apply — and streams the file through pip's session without building anything. The caller checks
the file's sha256.
"""

from __future__ import annotations

import sys
from pathlib import Path


def fetch_sdist(name: str, version: str, dest: Path) -> Path:
    from pip._internal.commands import create_command

    cmd = create_command("download")
    options, _ = cmd.parse_args(["--no-deps", f"{name}=={version}", "-d", str(dest)])
    with cmd.main_context():
        session = cmd.get_default_session(options)
        finder = cmd._build_package_finder(options, session, ignore_requires_python=True)
        found = [c for c in finder.find_all_candidates(name)
                 if str(c.version) == version and not c.link.is_wheel]
        if not found:
            raise SystemExit(f"no source distribution of {name} {version} on the configured package index")
        link = found[0].link
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / link.filename
        with session.get(link.url_without_fragment, stream=True) as r:
            r.raise_for_status()
            with open(out, "wb") as f:
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    print(fetch_sdist(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
