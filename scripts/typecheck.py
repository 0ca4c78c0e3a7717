"""Type-check the ``ponder`` package with basedpyright.

The repository maps its top-level folders into one import package (``models/`` is ``ponder.models``, see
``[tool.setuptools.package-dir]`` in pyproject.toml) and installs it through an editable finder hook that type
checkers cannot follow. This script builds the package as the import system sees it, as a tree of symlinks under
``build/typecheck/ponder/`` (git-ignored), runs basedpyright with ``pyrightconfig.json`` (which checks that tree)
and prints the diagnostics with repository paths (``models/prm.py``, not the link path).

Usage::

    .venv/bin/python scripts/typecheck.py            # what `make lint` runs
    .venv/bin/python scripts/typecheck.py --stats    # any extra arguments go to basedpyright

Exits with basedpyright's status: 0 when there are no errors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK_ROOT = ROOT / "build" / "typecheck"


def package_dirs() -> dict[str, str]:
    """The subpackages of ``ponder`` that live outside ``ponder/``: ``{"models": "models", ...}``.

    Read from pyproject's package-dir, so a new top-level subpackage is checked without editing this script.
    """
    # the table's lines are `"ponder.x" = "x"`; parsed by hand because tomllib is 3.11+ and ponder supports 3.10
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    table = text.split("[tool.setuptools.package-dir]", 1)[1].split("\n[", 1)[0]
    out: dict[str, str] = {}
    for name, folder in re.findall(r'^"([\w.]+)"\s*=\s*"([^"]+)"', table, flags=re.M):
        parts = name.split(".")
        # ponder.<sub> -> a top-level folder; deeper ones (ponder.models.engine) sit inside their parent
        if len(parts) == 2 and not folder.startswith("ponder/"):
            out[parts[1]] = folder
    return out


def build_links() -> dict[Path, Path]:
    """Rebuild ``build/typecheck/ponder``; returns {link path: repository path} for every link."""
    pkg = LINK_ROOT / "ponder"
    if pkg.exists() or pkg.is_symlink():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    links: dict[Path, Path] = {}
    for entry in sorted((ROOT / "ponder").iterdir()):
        if entry.name == "__pycache__":
            continue
        links[pkg / entry.name] = entry
    for sub, folder in package_dirs().items():
        links[pkg / sub] = ROOT / folder
    for link, target in links.items():
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=target.is_dir())
    return links


def unchecked(links: dict[Path, Path]) -> list[str]:
    """Linked folders that pyrightconfig.json does not include (pyright skips a symlinked folder it
    is not pointed at, so each one is listed there)."""
    config = json.loads((ROOT / "pyrightconfig.json").read_text(encoding="utf-8"))
    included = {os.path.normpath(i) for i in config.get("include", [])}
    return [
        str(link.relative_to(ROOT))
        for link, target in links.items()
        if target.is_dir() and os.path.normpath(link.relative_to(ROOT)) not in included
    ]


def main(argv: list[str]) -> int:
    links = build_links()
    missing = unchecked(links)
    if missing:
        sys.stderr.write(
            f"pyrightconfig.json does not include {', '.join(missing)}; add them to its include\n"
        )
        return 2
    exe = Path(sys.executable).parent / "basedpyright"
    cmd = [str(exe) if exe.exists() else "basedpyright", "-p", str(ROOT / "pyrightconfig.json"), *argv]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    # build/typecheck/ponder/<entry>... -> the repository path the entry links to
    repo_path = {link.name: str(target.relative_to(ROOT)) for link, target in links.items()}
    link_path = re.compile(re.escape(str(LINK_ROOT / "ponder")) + r"/([^/\s:]+)")
    for line in proc.stdout.splitlines():
        print(link_path.sub(lambda m: repo_path.get(m.group(1), m.group(0)), line))
    sys.stderr.write(proc.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
