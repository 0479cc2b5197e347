from __future__ import annotations

import os

import pytest

from cosmos_policy_jax.common import paths


def test_expands_set_variables_both_forms_and_home(monkeypatch):
    monkeypatch.setenv("CP_TEST_ROOT", "/data/root")
    monkeypatch.setenv("HOME", "/home/someone")
    assert paths.expand_path("${CP_TEST_ROOT}/a/$CP_TEST_ROOT") == ("/data/root/a//data/root", [])
    assert paths.expand_path("~/x") == ("/home/someone/x", [])


def test_missing_variables_are_named_and_left_in_place(monkeypatch):
    monkeypatch.delenv("CP_TEST_MISSING_A", raising=False)
    monkeypatch.delenv("CP_TEST_MISSING_B", raising=False)
    expanded, missing = paths.expand_path("${CP_TEST_MISSING_A}/x/$CP_TEST_MISSING_B")
    assert missing == ["CP_TEST_MISSING_A", "CP_TEST_MISSING_B"]
    assert expanded == "${CP_TEST_MISSING_A}/x/$CP_TEST_MISSING_B"


def test_package_default_applies_unless_the_environment_sets_it(monkeypatch):
    monkeypatch.delenv("COSMOS_POLICY_DATA_ROOT", raising=False)
    default = paths.DEFAULT_VARS["COSMOS_POLICY_DATA_ROOT"]
    assert paths.expand_path("${COSMOS_POLICY_DATA_ROOT}/demo") == (f"{default}/demo", [])
    monkeypatch.setenv("COSMOS_POLICY_DATA_ROOT", "/elsewhere")
    assert paths.expand_path("${COSMOS_POLICY_DATA_ROOT}/demo") == ("/elsewhere/demo", [])


def test_expand_required_raises_the_callers_error_naming_setting_and_variable(monkeypatch, tmp_path):
    class MyError(ValueError):
        pass

    monkeypatch.delenv("CP_TEST_MISSING_A", raising=False)
    with pytest.raises(MyError) as info:
        paths.expand_required("${CP_TEST_MISSING_A}/stats.json", "--stats", MyError)
    assert (
        str(info.value)
        == "--stats: environment variable(s) CP_TEST_MISSING_A not set (${CP_TEST_MISSING_A}/stats.json)"
    )
    monkeypatch.chdir(tmp_path)
    assert paths.expand_required("rel/file", "--stats") == os.path.join(str(tmp_path), "rel", "file")
