"""Video frames by timestamp with PyAV (no PyTorch): what the LeRobot source reads its cameras with.

``VideoFrames.frame(path, t, fps)`` seeks to the key frame at or before ``t`` and decodes forward to
the frame whose presentation time is within half a frame period of ``t``; a missing frame (a video
shorter than its episode, a truncated file) is a :class:`DataError` naming the file and the camera.
Open containers are kept in a small per-process LRU; the object pickles without them and drops the
parent's after a fork, so grain worker processes each open their own.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any

import numpy as np

from cosmos_policy_jax.common.errors import first_line
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.open_files import OpenFiles

_MAX_OPEN = 16


def _av() -> Any:
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a declared dependency of the lerobot extra
        raise DataError("reading LeRobot videos needs PyAV: pip install 'cosmos_policy_jax[lerobot]'") from e
    av.logging.set_level(av.logging.PANIC)  # decoder chatter on stderr; errors still raise
    return av


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """Header facts of one video file (read without decoding)."""

    width: int
    height: int
    duration_s: float  # end of the stream in seconds (container duration when the stream has none)
    codec: str


def probe(path: str, what: str = "", *, until: float | None = None, fps: float = 30.0) -> VideoInfo:
    """Open ``path`` and read its first video stream's header; a missing or unreadable file raises.

    ``until``: also read (demux, not decode) the packets around that time, so a file cut short
    behind a complete header (a truncated copy) is caught without decoding the video.
    """
    av = _av()
    label = f" ({what})" if what else ""
    if not os.path.isfile(path):
        raise DataError(f"{path}: video file not found{label}")
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise DataError(f"{path}: no video stream{label}")
            s = c.streams.video[0]
            if s.duration is not None and s.time_base is not None:
                duration = float((s.start_time or 0) * s.time_base + s.duration * s.time_base)
            elif c.duration is not None:
                duration = float(c.duration) / 1e6
            else:
                duration = float("nan")
            info = VideoInfo(int(s.codec_context.width), int(s.codec_context.height), duration, s.codec_context.name)
            if until is not None and not _has_packet_at(c, s, until, 0.5 / fps):
                raise DataError(
                    f"{path}: video has no frame at {until:.3f}s{label}; it is truncated or shorter than its episodes"
                )
            return info
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot open video{label} ({first_line(e)})") from e


def _has_packet_at(c: Any, stream: Any, t: float, tol: float) -> bool:
    c.seek(max(0, int(t / stream.time_base)), stream=stream, backward=True, any_frame=False)
    for packet in c.demux(stream):
        if packet.pts is None:
            continue
        if packet.size == 0:
            return False
        if float(packet.pts * stream.time_base) >= t - tol:
            return True
    return False


def _open_video(path: str, what: str) -> Any:
    try:
        c = _av().open(path)
    except Exception as e:
        raise DataError(f"{path}: cannot open video ({what}) ({first_line(e)})") from e
    if not c.streams.video:
        c.close()
        raise DataError(f"{path}: no video stream ({what})")
    c.streams.video[0].thread_type = "NONE"  # one sample decodes 1-2 frames: threads only cost
    return c


class VideoFrames:
    """Random access to RGB frames of many video files, one LRU of open containers per process."""

    def __init__(self, max_open: int = _MAX_OPEN):
        self.max_open = int(max_open)
        self._containers = OpenFiles(_open_video, self.max_open)
        self._lock = threading.Lock()  # a container decodes for one caller at a time

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_open"])

    def frame(self, path: str, timestamp: float, fps: float, what: str = "") -> np.ndarray:
        """The ``(H, W, 3)`` uint8 RGB frame shown at ``timestamp`` seconds (within half a frame)."""
        with self._lock:
            c = self._containers.get(path, what)
            try:
                return _decode_at(c, float(timestamp), 0.5 / float(fps), path, what)
            except DataError:
                self._drop(path)
                raise
            except Exception as e:
                self._drop(path)
                raise DataError(f"{path}: cannot decode frame at {timestamp:.3f}s ({what}) ({first_line(e)})") from e

    def _drop(self, path: str) -> None:
        self._containers.drop(path)

    def close(self) -> None:
        with self._lock:
            self._containers.close()


def _decode_at(c: Any, timestamp: float, tol: float, path: str, what: str) -> np.ndarray:
    stream = c.streams.video[0]
    tb = stream.time_base
    c.seek(max(0, int(timestamp / tb)), stream=stream, backward=True, any_frame=False)
    for frame in c.decode(stream):
        if frame.pts is None:
            continue
        t = float(frame.pts * tb)
        if abs(t - timestamp) <= tol:
            return frame.to_ndarray(format="rgb24")
        if t > timestamp + tol:
            break
    raise DataError(
        f"{path}: no frame at {timestamp:.3f}s ({what}); the video is shorter than its episode or truncated"
    )
