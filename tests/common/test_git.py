from __future__ import annotations

import shutil
import subprocess

import pytest

from cosmos_policy_jax.common.git import git_commit


def test_outside_a_checkout_is_none(tmp_path):
    assert git_commit(str(tmp_path)) is None


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_commit_of_a_repository(tmp_path):
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (tmp_path / "f").write_text("x")
    git("add", "f")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m")
    head = git("rev-parse", "HEAD").strip()
    assert git_commit(str(tmp_path)) == head
    assert head.startswith(git_commit(str(tmp_path), short=True)) and len(git_commit(str(tmp_path), short=True)) < 40
