"""What got installed, as the validation run's first check: prints one JSON object.

The installed ai-bottleneck (version, where it lives), each requirement it declares
with the version found (or missing), the probes its entry points name, and the
versions of nvidia-ml-py and torch on the machine. Imports nothing heavy: torch's
version comes from its metadata.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", spec, maxsplit=1)[0]


def _satisfied(spec: str, version: str | None) -> bool | None:
    """Whether ``version`` meets ``spec``; None where that cannot be told here."""
    if version is None:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return None
    return Requirement(spec).specifier.contains(version, prereleases=True)


def main() -> int:
    found: dict[str, object] = {"python": sys.version.split()[0]}
    try:
        dist = metadata.distribution("ai-bottleneck")
    except metadata.PackageNotFoundError:
        found["error"] = "ai-bottleneck is not installed"
        print(json.dumps(found))
        return 1
    found["version"] = dist.version
    import ai_bottleneck

    found["location"] = str(ai_bottleneck.__file__)
    requirements: dict[str, dict[str, str | bool | None]] = {}
    for spec in dist.requires or []:
        if "extra ==" in spec:
            continue
        name = _requirement_name(spec)
        try:
            version: str | None = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = None
        requirements[name] = {"wants": spec, "found": version,
                              "satisfied": _satisfied(spec, version)}
    found["requirements"] = requirements
    found["missing"] = sorted(n for n, r in requirements.items() if r["found"] is None)
    found["too_old"] = sorted(n for n, r in requirements.items() if r["satisfied"] is False)
    found["probes"] = sorted(ep.name for ep in metadata.entry_points(
        group="ai_bottleneck.probes"))
    for name in ("nvidia-ml-py", "torch"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    print(json.dumps(found))
    return 0 if not found["missing"] and not found["too_old"] else 1


if __name__ == "__main__":
    sys.exit(main())
