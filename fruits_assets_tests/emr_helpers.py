"""Helpers of the EMR tests: IAM's verdict on a policy document, a TLS certificates zip."""

from __future__ import annotations

import fnmatch
import zipfile
from pathlib import Path
from typing import Any

from fruits_assets.emr.spec import TLS_PEM_FILES


def certificates_zip(path: Path, names: tuple[str, ...] = TLS_PEM_FILES) -> Path:
    """A zip shaped as EMR's PEM provider wants it (the contents are not checked here)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, "-----BEGIN CERTIFICATE-----\n")
    return path


def listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def matches(statement: dict[str, Any], action: str, resource: str) -> bool:
    actions = [a.lower() for a in listed(statement["Action"])]
    return any(fnmatch.fnmatchcase(action.lower(), a) for a in actions) and any(
        fnmatch.fnmatchcase(resource, r) for r in listed(statement["Resource"])
    )


def allowed(policy: dict[str, Any], action: str, resource: str) -> bool:
    """IAM's verdict for one policy alone: an explicit deny wins; Allow conditions are ignored
    (that over-grants, so "not allowed" here is not allowed on AWS either)."""
    statements = policy["Statement"]
    denies = [s for s in statements if s["Effect"] == "Deny"]
    assert all("Condition" not in s for s in denies), "denies here hold without conditions"
    if any(matches(s, action, resource) for s in denies):
        return False
    return any(matches(s, action, resource) for s in statements if s["Effect"] == "Allow")
