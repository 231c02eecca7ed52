"""python scripts/wheels_needed.py WHEEL_DIR: the name==version of each distribution in WHEEL_DIR that
this Python lacks or has older, one a line, for ``pip install --no-deps`` (scripts/gpu-check.sh).

A distribution this Python already has, at the wheel's version or newer, is left as it is: on a GPU
node its own torch, numpy and friends must not be shadowed. Only the standard library is imported
(``packaging`` when present, for version order).
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def version_key(version: str) -> tuple:
    try:
        from packaging.version import Version

        return (Version(version),)
    except Exception:   # no packaging, or a version it cannot parse: numeric parts in order
        return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.+-]", version))


def newest_wheels(folder: Path) -> dict[str, str]:
    """Distribution name -> the newest version among the folder's wheels."""
    newest: dict[str, str] = {}
    for path in sorted(folder.glob("*.whl")):
        found = WHEEL.match(path.name)
        if not found:
            continue
        name, version = canonical(found["name"]), found["version"]
        if name not in newest or version_key(version) > version_key(newest[name]):
            newest[name] = version
    return newest


def needed(folder: Path) -> list[str]:
    out = []
    for name, version in sorted(newest_wheels(folder).items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have is None or version_key(have) < version_key(version):
            out.append(f"{name}=={version}")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print("usage: python scripts/wheels_needed.py WHEEL_DIR", file=sys.stderr)
        sys.exit(2)
    for requirement in needed(Path(sys.argv[1])):
        print(requirement)
