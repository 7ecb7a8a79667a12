"""A message given as one buffer or as a list of frames, read as one byte string."""

from __future__ import annotations

import bisect
from typing import Any

__all__ = ["Rope"]


class Rope:
    """A message given as one buffer or as a list of frames, read as one byte string.

    ``view`` hands out a zero-copy view when the span lies inside one frame and
    a joined copy when it straddles frames.
    """

    def __init__(self, data: Any) -> None:
        if type(data) is bytes:  # the common case: already read-only bytes of format "B"
            self.parts = [memoryview(data)]
            self.starts = [0]
            self.total = len(data)
            return
        parts = data if isinstance(data, (list, tuple)) else (data,)
        try:
            self.parts = [memoryview(p).cast("B").toreadonly() for p in parts]
        except TypeError as e:
            raise TypeError(f"decode() takes a bytes-like object or a list of them: {e}") from None
        self.starts = []
        total = 0
        for p in self.parts:
            self.starts.append(total)
            total += p.nbytes
        self.total = total

    def locate(self, start: int, n: int) -> tuple[memoryview, int, int | None]:
        """``(buffer, offset, part index)`` holding bytes ``[start, start + n)``.

        The part index is None when the span straddles frames and was copied.
        """
        if len(self.parts) == 1:
            return self.parts[0], start, 0
        i = bisect.bisect_right(self.starts, start) - 1
        local = start - self.starts[i]
        if local + n <= self.parts[i].nbytes:
            return self.parts[i], local, i
        return self.view(start, n), 0, None

    def view(self, start: int, n: int) -> memoryview:
        """Bytes ``[start, start + n)``; the caller has checked the range."""
        if len(self.parts) == 1:
            return self.parts[0][start : start + n]
        i = bisect.bisect_right(self.starts, start) - 1
        local = start - self.starts[i]
        part = self.parts[i]
        if local + n <= part.nbytes:
            return part[local : local + n]
        out = bytearray(n)
        pos = 0
        while pos < n:
            chunk = self.parts[i][local : local + n - pos]
            out[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
            i, local = i + 1, 0
        return memoryview(out).toreadonly()
