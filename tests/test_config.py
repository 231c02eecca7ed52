"""Profile loading: layering, overrides and errors that name the file and key."""
from pathlib import Path

import pytest

from pipeline.config import PROFILES_DIR, ProfileError, load_profile, parse_override
from pipeline.runs import stage_fingerprint


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_shipped_profile_validates():
    for path in sorted(PROFILES_DIR.glob("*.yaml")):
        if path.stem == "defaults":
            continue
        profile = load_profile(path, check_paths=False)
        assert profile.name == path.stem
        for stage in profile.stages:
            res = profile.resources_for(stage)
            assert res.mem_gb and res.time_min and res.cpus, (path, stage)


def test_layers_merge_defaults_profile_and_overrides(tmp_path):
    path = write(tmp_path, "data: {dataset: sample/hcrl_sa}\ndata_root: data\ntrain: {epochs: 7}\n"
                           "resources: {teacher: {mem_gb: 3}}\n")
    profile = load_profile(path, ["train.lr=0.5", "resources.teacher.partition=gpu"])
    assert profile.train.epochs == 7          # profile over defaults
    assert profile.train.batch_size == 64     # from defaults.yaml
    assert profile.train.lr == 0.5            # -O over both
    teacher = profile.resources_for("teacher")
    assert (teacher.mem_gb, teacher.partition, teacher.gpus) == (3, "gpu", 1)
    assert profile.resources_for("evaluate").partition is None


def test_unknown_key_names_file_and_lists_valid_keys(tmp_path):
    path = write(tmp_path, "train: {epochz: 3}\n")
    with pytest.raises(ProfileError) as err:
        load_profile(path, check_paths=False)
    msg = str(err.value)
    assert "p.yaml" in msg and "train.epochz" in msg and "'epochs'" in msg


def test_unknown_key_from_override_names_the_override(tmp_path):
    path = write(tmp_path, "{}\n")
    with pytest.raises(ProfileError, match=r"-O model\.width=3: model\.width: unknown key"):
        load_profile(path, ["model.width=3"], check_paths=False)


def test_wrong_type_is_not_coerced(tmp_path):
    path = write(tmp_path, "train: {epochs: 'ten'}\n")
    with pytest.raises(ProfileError, match=r"p\.yaml: train\.epochs: .*integer"):
        load_profile(path, check_paths=False)
    path = write(tmp_path, "train: {amp: 'yes please'}\n")
    with pytest.raises(ProfileError, match=r"train\.amp"):
        load_profile(path, check_paths=False)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_safety_factor_must_be_in_unit_interval(tmp_path, value):
    path = write(tmp_path, f"safety_factor: {value}\n")
    with pytest.raises(ProfileError, match=r"p\.yaml: safety_factor: must be in \(0, 1\]"):
        load_profile(path, check_paths=False)


def test_safety_factor_one_is_allowed(tmp_path):
    assert load_profile(write(tmp_path, "safety_factor: 1\n"), check_paths=False).safety_factor == 1


def test_missing_data_path_names_the_key_and_the_fix(tmp_path):
    path = write(tmp_path, "data: {dataset: nowhere/at/all}\n")
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    msg = str(err.value)
    assert "data.dataset" in msg and "nowhere/at/all" in msg and "PIPELINE_DATA_ROOT" in msg


def test_data_root_from_environment(tmp_path, monkeypatch):
    (tmp_path / "ds").mkdir()
    monkeypatch.setenv("PIPELINE_DATA_ROOT", str(tmp_path))
    path = write(tmp_path, "data: {dataset: ds}\n")
    assert load_profile(path).dataset_path == (tmp_path / "ds").resolve()
    # -O wins over the environment
    other = tmp_path / "other"
    (other / "ds").mkdir(parents=True)
    assert load_profile(path, [f"data_root={other}"]).dataset_path == (other / "ds").resolve()


def test_unknown_stage_and_resource_key(tmp_path):
    with pytest.raises(ProfileError, match="unknown stage"):
        load_profile(write(tmp_path, "stages: [preprocess, tacher]\n"), check_paths=False)
    with pytest.raises(ProfileError, match="unknown stage"):
        load_profile(write(tmp_path, "resources: {teachr: {mem_gb: 1}}\n"), check_paths=False)
    with pytest.raises(ProfileError, match=r"resources\.teacher\.memory: unknown key"):
        load_profile(write(tmp_path, "resources: {teacher: {memory: 1}}\n"), check_paths=False)


def test_stride_larger_than_window_rejected(tmp_path):
    with pytest.raises(ProfileError, match="stride"):
        load_profile(write(tmp_path, "data: {window: 10, stride: 20}\n"), check_paths=False)


def test_bad_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(write(tmp_path, "train: [1, 2\n"), check_paths=False)
    with pytest.raises(ProfileError, match="mapping"):
        load_profile(write(tmp_path, "- a\n- b\n"), check_paths=False)


def test_unknown_profile_name_lists_known():
    with pytest.raises(ProfileError, match="set_01"):
        load_profile("no_such_profile")


def test_parse_override():
    assert parse_override("train.epochs=3") == {"train": {"epochs": 3}}
    assert parse_override("device=cpu") == {"device": "cpu"}
    assert parse_override("data.limit_rows=null") == {"data": {"limit_rows": None}}
    # Text that YAML cannot read (a glob starts like an alias) is the string as typed, not a traceback.
    assert parse_override("data.val_files=*sonata*") == {"data": {"val_files": "*sonata*"}}
    assert parse_override("data.val_files=[a, b") == {"data": {"val_files": "[a, b"}}
    with pytest.raises(ProfileError, match="key=value"):
        parse_override("train.epochs")


def test_fingerprint_ignores_resources(tmp_path):
    path = write(tmp_path, "{}\n")
    a = load_profile(path, ["resources.teacher.mem_gb=1"], check_paths=False)
    b = load_profile(path, ["resources.teacher.mem_gb=99"], check_paths=False)
    c = load_profile(path, ["train.epochs=99"], check_paths=False)
    for stage in a.stages:
        assert stage_fingerprint(a, stage, {}) == stage_fingerprint(b, stage, {})
    assert stage_fingerprint(a, "teacher", {}) != stage_fingerprint(c, "teacher", {})


def test_unknown_key_under_a_named_mapping_lists_the_valid_keys():
    with pytest.raises(ProfileError, match=r"resources\.teacher\.bogus: unknown key 'bogus'; valid keys here: .*'gpus'"):
        load_profile("local", ["resources.teacher.bogus=1"], check_paths=False)
