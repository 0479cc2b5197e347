"""The ``lerobot`` config bases and the demo's ``lerobot`` modifier: static validation and layout agreement."""

from __future__ import annotations

import pytest

from configs import cosmos_policy
from cosmos_policy_jax import config_lib
from cosmos_policy_jax.data.errors import DataError
from cosmos_policy_jax.data.lerobot import LeRobotOptions, LeRobotSource, layout_for_cameras
from cosmos_policy_jax.layouts import full_layout
from tests.data.test_lerobot import CAMS, KEYS, copy_dataset, write_embeddings


@pytest.mark.parametrize("arg", ["lerobot", "lerobot_aloha", "lerobot_robocasa", "lerobot,tiny", "demo,lerobot"])
def test_configs_validate_statically(arg):
    config = cosmos_policy.get_config(arg)
    config_lib.resolve(config)
    config_lib.validate(config, check_paths=False)


@pytest.mark.parametrize("arg", ["lerobot", "lerobot_aloha", "lerobot_robocasa"])
def test_default_camera_mapping_matches_the_model_layout(arg):
    config = cosmos_policy.get_config(arg)
    cams = config.dataloader_train.dataset.lerobot.cameras.to_dict()
    name = layout_for_cameras(cams)
    assert name == {"lerobot": "libero", "lerobot_aloha": "aloha", "lerobot_robocasa": "robocasa"}[arg]
    assert dict(config.model.latent_layout) == full_layout(name)


def test_demo_modifier_only_on_demo():
    c = cosmos_policy.get_config("demo,lerobot")
    assert c.dataloader_train.dataset.demo_format == "lerobot" and c.dataloader_val.dataset.demo_format == "lerobot"
    with pytest.raises(ValueError, match="applies to the demo base only"):
        cosmos_policy.get_config("libero,lerobot")


@pytest.mark.parametrize(
    "cams,layout",
    [
        ({"primary": CAMS["primary"], "wrist": CAMS["wrist"], "wrist2": CAMS["primary"]}, "aloha"),
        ({"primary": CAMS["primary"], "primary2": CAMS["wrist"], "wrist": CAMS["wrist"]}, "robocasa"),
    ],
)
def test_source_layout_follows_the_camera_roles(cams, layout, tmp_path):
    emb = write_embeddings(tmp_path, ["pick up the red block", "open the top drawer"])
    root = copy_dataset("v21", tmp_path)
    src = LeRobotSource(
        LeRobotOptions(
            data_dir=root, t5_text_embeddings_path=emb, cameras=cams, chunk_size=2, final_image_size=16, **KEYS
        )
    )
    assert src.layout == full_layout(layout) and src.state_t == 11
    sample = src.get(0)
    assert sample["video"].shape[1] == src.num_frames
    assert {k for k in sample if k.endswith("_latent_idx")} == {f"{s}_latent_idx" for s in src.SAMPLE_SLOTS}
    src.close()


def test_bad_camera_roles():
    with pytest.raises(DataError, match=r"cameras\.primary: a primary"):
        layout_for_cameras({"wrist": "a"})
    with pytest.raises(DataError, match="not both"):
        layout_for_cameras({"primary": "a", "primary2": "b", "wrist2": "c"})
    with pytest.raises(DataError, match="unknown role"):
        layout_for_cameras({"primary": "a", "side": "b"})
