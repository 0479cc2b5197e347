"""Fixtures of the data tests."""

from __future__ import annotations

import pytest

from tests.data.dataset_files import copy_rollouts


@pytest.fixture
def libero(tmp_path):
    """A copy of the ``libero_rollouts`` fixture: (paths of the options, the fixture's reader options)."""
    demo_dir, rollout_dir, t5, kwargs = copy_rollouts(tmp_path)
    return dict(data_dir=demo_dir, rollout_data_dir=rollout_dir, t5_text_embeddings_path=t5), kwargs
