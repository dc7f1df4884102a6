"""protocols/ is sans-IO: importing it loads no event loop, socket or logging library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("anyio", "asyncio", "trio", "socket", "ssl", "structlog", "sniffio")


def test_importing_protocols_loads_no_io_library() -> None:
    root = Path(__file__).resolve().parents[2]
    modules = sorted(p.stem for p in (root / "protocols").glob("*.py") if p.stem != "__init__")
    code = (
        "import sys\n"
        + "".join(f"import protocols.{m}\n" for m in modules)
        + "import protocols.dialects\n"
        + f"print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
