"""cffi build script for ``engine._native`` (API / out-of-line mode).

Used by ``setup.py`` through ``cffi_modules``; can also be run directly
(``python native/build_native.py``) to build the extension in place.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER = HERE / "engine_audio.h"
SOURCE = HERE / "engine_audio.c"


def _cdef_text() -> str:
    """The header without preprocessor lines, which cffi's cdef cannot parse
    (except the plain integer ``#define`` constants, which it can)."""
    lines = []
    for line in HEADER.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            parts = stripped.split()
            if parts[0] == "#define" and len(parts) == 3 and parts[2].lstrip("-").isdigit():
                lines.append(f"#define {parts[1]} {parts[2]}")
            continue
        lines.append(line)
    return "\n".join(lines)


def _compile_args() -> list[str]:
    if sys.platform == "win32":
        return ["/O2"]
    args = [
        "-O3",
        "-std=c11",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
    ]
    extra = os.environ.get("ENGINE_NATIVE_CFLAGS")
    if extra:
        args += extra.split()
    return args


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "engine._native",
    '#include "engine_audio.h"',
    sources=[os.path.relpath(SOURCE)],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=_compile_args(),
    libraries=[] if sys.platform == "win32" else ["m"],
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(verbose=True)
