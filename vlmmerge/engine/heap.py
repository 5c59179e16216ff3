"""When a static merge hands malloc's free memory back to the system.

glibc keeps freed blocks below its mmap threshold (at most 32 MB) in per-thread arenas, so the
resident set grows by what earlier tensors left there. `malloc_trim` returns it, but every page it
returns is faulted in and zeroed again by the next tensor's temporaries: trimmed after every tensor,
a merge of the 150M-parameter benchmark models spent a third of its kernel time zeroing pages. So
the merge trims only when the arenas hold more than `slack` free bytes, and before the large tensors
run (they set the peak: what the typical ones left is returned first). Elsewhere than glibc, no trim.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

DEFAULT_SLACK_BYTES = 128 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc() -> tuple[Callable[[int], int], Callable[[], _MallInfo2]] | None:
    try:
        libc = ctypes.CDLL(None)
        trim, info = libc.malloc_trim, libc.mallinfo2  # mallinfo2: glibc 2.33+
    except (OSError, AttributeError):
        return None
    info.restype = _MallInfo2
    return trim, info


class HeapTrim:
    """Trims glibc's arenas when their free bytes exceed `slack` (`maybe_trim`) or on demand (`trim`)."""

    def __init__(self, slack: int = DEFAULT_SLACK_BYTES, functions=None) -> None:
        self.slack = slack
        self._functions = _glibc() if functions is None else functions
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._functions is not None

    def free_bytes(self) -> int:
        """Bytes malloc holds free in its arenas (0 where unknown)."""
        return int(self._functions[1]().fordblks) if self._functions is not None else 0

    def trim(self) -> None:
        if self._functions is not None:
            self._functions[0](0)
            self.trims += 1

    def maybe_trim(self) -> None:
        if self._functions is not None and self.free_bytes() > self.slack:
            self.trim()
