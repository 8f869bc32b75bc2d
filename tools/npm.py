"""``npm ci`` for the project's Node packages (examples/node, tools/asyncapi), run only when needed.

    python tools/npm.py examples/node tools/asyncapi

A package directory is current when ``node_modules/.marketbus-lock`` holds the sha256 of its
``package-lock.json``; otherwise ``npm ci`` reinstalls exactly what the lock file pins. Node and
npm are required (the machine and CI have them): their absence is an error, never a skip.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = ".marketbus-lock"


class NodeMissing(RuntimeError):
    pass


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise NodeMissing(f"`{tool}` is not on PATH: install Node.js 18+ with npm (e.g. apt-get install -y nodejs npm)")
    return path


def npm_ci(package_dir: Path | str) -> Path:
    """Install ``package_dir``'s locked dependencies unless already current; returns node_modules."""
    directory = (ROOT / package_dir).resolve()
    lock = directory / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    modules = directory / "node_modules"
    stamp = modules / STAMP
    if stamp.exists() and stamp.read_text().strip() == digest:
        return modules
    require("node")
    result = subprocess.run(
        [require("npm"), "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=directory, capture_output=True, text=True, timeout=300, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"npm ci in {directory} failed:\n{result.stdout}{result.stderr}")
    stamp.write_text(digest + "\n")
    return modules


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["examples/node", "tools/asyncapi"]:
        print(npm_ci(arg))
