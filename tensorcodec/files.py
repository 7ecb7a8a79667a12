"""Streams in files: ``dump`` writes a tree as a stream of frames, ``load`` reads one back.

Both hold about one frame in memory whatever the size of the model, and ``load`` reads only what
the file holds, so a frame header that lies about its length costs no memory. Several streams can
follow each other in one file.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from .errors import DecodeError
from .stream import StreamDecoder, encode_stream
from .wire.stream import FRAME, FRAME_HEADER_SIZE, STREAM_MAGIC

__all__ = ["dump", "load"]

_READ_CHUNK = 1 << 20
"""Frames are read in growing steps from this size."""


def dump(obj: Any, fp: BinaryIO, **encode_kw: Any) -> int:
    """Writes ``obj`` to a binary file object as a stream of frames; returns the bytes written.

    Takes the keyword arguments of ``encode_stream``; memory stays at about one
    frame, whatever the size of the model.

    Examples:
        >>> import io, numpy as np, tensorcodec as tc
        >>> file = io.BytesIO()
        >>> written = tc.dump({"w": np.arange(3.0)}, file, precision="bf16")
        >>> _ = file.seek(0)
        >>> tc.load(file)["w"]
        array([0., 1., 2.])
    """
    written = 0
    for frame in encode_stream(obj, **encode_kw):
        fp.write(frame)
        written += len(frame)
    return written


def load(fp: BinaryIO, **decode_kw: Any) -> Any:
    """Reads one stream from a binary file object, frame by frame, and decodes it.

    Takes the keyword arguments of ``decode_stream``. Stops after the stream's
    last frame, so several streams can follow each other in one file. Reads
    only what the file holds: a frame header announcing more bytes than follow
    raises DecodeError, without allocating what it announced.

    Examples:
        >>> import io, numpy as np, tensorcodec as tc
        >>> file = io.BytesIO()
        >>> _ = tc.dump({"first": 1}, file), tc.dump({"second": 2}, file)
        >>> _ = file.seek(0)
        >>> tc.load(file), tc.load(file)
        ({'first': 1}, {'second': 2})
    """
    on_tensor = decode_kw.pop("on_tensor", None)
    decoder = StreamDecoder(**decode_kw)
    while not decoder.done:
        head = fp.read(FRAME_HEADER_SIZE)
        while head and len(head) < FRAME_HEADER_SIZE:  # raw files and pipes may return short reads
            more = fp.read(FRAME_HEADER_SIZE - len(head))
            if not more:
                break
            head += more
        if len(head) < FRAME_HEADER_SIZE:
            raise DecodeError(
                f"frame {decoder.frames}: the file ends "
                + ("before the stream's last frame" if not head else f"inside a frame header ({len(head)} bytes)")
            )
        if head[:4] != STREAM_MAGIC:
            raise DecodeError(f"frame {decoder.frames}: not a tensorcodec stream frame: magic {head[:4]!r}")
        length = FRAME.unpack(head)[6]
        frame = _read_frame(fp, head, length, decoder.frames)
        for item in decoder.feed(frame):
            if on_tensor is not None:
                on_tensor(item)
    return decoder.result()


def _read_frame(fp: BinaryIO, head: bytes, length: int, number: int) -> bytearray:
    """The frame with its body, grown with the bytes that arrive, so that a lying header costs no memory.

    The buffer at most doubles what has been read (from 1 MiB), so a frame costs at most twice its
    own bytes plus 1 MiB, and a long one a logarithmic number of regrowths.
    """
    frame = bytearray(FRAME_HEADER_SIZE + min(length, _READ_CHUNK))
    frame[:FRAME_HEADER_SIZE] = head
    pos = FRAME_HEADER_SIZE
    end = FRAME_HEADER_SIZE + length
    readinto = getattr(fp, "readinto", None)
    while pos < end:
        if pos == len(frame):
            frame.extend(bytes(min(end - pos, max(_READ_CHUNK, pos))))
        if readinto is not None:
            got = readinto(memoryview(frame)[pos:]) or 0
        else:
            chunk = fp.read(len(frame) - pos)
            got = len(chunk)
            frame[pos : pos + got] = chunk
        if not got:
            raise DecodeError(f"frame {number}: the file ends after {pos - FRAME_HEADER_SIZE} of its {length} bytes")
        pos += got
    return frame
