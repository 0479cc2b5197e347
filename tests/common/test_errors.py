from __future__ import annotations

import errno

from cosmos_policy_jax.common.errors import first_line


def test_first_non_empty_line():
    assert first_line(ValueError("\n  bad value 3  \nTraceback detail\n")) == "bad value 3"


def test_empty_message_gives_the_type_name():
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("\n \n")) == "RuntimeError"


def test_os_error_gives_the_reason_without_errno_and_path():
    e = FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/x.hdf5")
    assert first_line(e) == "No such file or directory"
    assert first_line(OSError("plain message\nmore")) == "plain message"  # no strerror: the message


def test_limit():
    assert first_line(ValueError("x" * 1000)) == "x" * 300
    assert first_line(ValueError("abcdef"), limit=3) == "abc"
