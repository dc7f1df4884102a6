"""What a test needs from the machine: in CI (``CI=true``) its absence fails the run, on a
developer machine it skips the test with the reason."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(command: str, package: str) -> str:
    """The path of an operator tool (HAProxy, promtool, Chromium), which .ci/run installs."""
    # /usr/sbin: where Debian puts haproxy, not on every user's PATH.
    path = shutil.which(command, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if path is not None:
        return path
    message = f"{command} is not installed (Debian package {package!r})"
    if in_ci():
        pytest.fail(f"{message} and CI=true: .ci/run must install it")
    pytest.skip(f"{message}: apt-get install {package} to run this test")
