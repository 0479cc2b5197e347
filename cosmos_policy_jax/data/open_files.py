"""A per-process LRU of open file handles (HDF5 files, video demuxers), shared by the dataset readers."""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from typing import Any


class OpenFiles:
    """``get(path, *args)`` returns the open handle of ``path`` (``opener(path, *args)`` on a miss), keeping
    at most ``max_open`` handles and closing the least recently used.

    Handles never cross processes: a forked or unpickled copy (grain workers) starts empty, because a
    parent's open files and demuxers are not safe to share."""

    def __init__(self, opener: Callable[..., Any], max_open: int):
        self.opener, self.max_open = opener, int(max_open)
        self._reset()

    def _reset(self) -> None:
        self._open: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"opener": self.opener, "max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.opener, self.max_open = state["opener"], state["max_open"]
        self._reset()

    def __len__(self) -> int:
        return len(self._open)

    def get(self, path: str, *args: Any) -> Any:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's handles are not ours
                self._open = collections.OrderedDict()
                self._pid = os.getpid()
            handle = self._open.get(path)
            if handle is not None:
                self._open.move_to_end(path)
                return handle
            handle = self.opener(path, *args)
            self._open[path] = handle
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)[1].close()
            return handle

    def drop(self, path: str) -> None:
        """Close and forget ``path``'s handle (e.g. after a read failed on it)."""
        with self._lock:
            handle = self._open.pop(path, None)
        if handle is not None:
            handle.close()

    def close(self) -> None:
        with self._lock:
            for handle in self._open.values():
                handle.close()
            self._open.clear()
