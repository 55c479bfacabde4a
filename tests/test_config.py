import pytest

from gensar.config import ConfigError, Params, load_params


def test_repository_params_load_typed():
    p = load_params("params.yaml")
    assert isinstance(p, Params)
    assert p.ids.shared_levels == 2 and p.ids.codebook_size == 256
    assert p.ids.hidden == (512, 256, 128)
    assert p.data.synthetic.events_per_user == (6, 16)
    assert p.train.tasks["rec"] == 1.0


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("ids:\n  shared_levles: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'ids.shared_levles'"):
        load_params(f)


def test_wrong_type_is_named(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  epochs: ten\n")
    with pytest.raises(ConfigError, match=r"'train.epochs' must be an integer"):
        load_params(f)


def test_missing_sections_take_defaults_and_overrides_apply(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("ids:\n  mode: paper\n")
    p = load_params(f, overrides={"ids.mode": "semantic", "train.epochs": 2})
    assert p.ids.mode == "semantic" and p.train.epochs == 2
    assert p.data.source == "synthetic"
    assert load_params(None, {"train.epochs": 3}).train.epochs == 3


def test_missing_params_file_fails_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.yaml: params file not found"):
        load_params(tmp_path / "absent.yaml")


def test_set_params_keeps_comments_and_refuses_wrong_types(tmp_path):
    from gensar.config import set_params

    f = tmp_path / "params.yaml"
    f.write_text("train:\n  epochs: 10   # from scratch\nincremental:\n  enabled: false  # set by the flows\n")
    assert set_params(f, {"incremental.enabled": True, "incremental.train_epochs": 2})
    text = f.read_text()
    assert "# from scratch" in text and "# set by the flows" in text
    p = load_params(f)
    assert p.incremental.enabled is True and p.incremental.train_epochs == 2 and p.train.epochs == 10
    assert not set_params(f, {"incremental.enabled": True})              # nothing to change
    with pytest.raises(ConfigError, match=r"'train.epochs' must be an integer"):
        set_params(f, {"train.epochs": "ten"})
    assert load_params(f).train.epochs == 10                               # the file was not replaced


def test_a_stage_runs_only_with_the_params_file_dvc_reads(tmp_path):
    from tasks.stages import run_stage

    with pytest.raises(ValueError, match=r"DVC reads params.yaml, so a stage can only run with it"):
        run_stage(str(tmp_path), "train", params="other.yaml")


def test_dvc_stages_track_every_key_that_changes_results():
    """A stage that lists its section's keys one by one (to leave out where it runs: device,
    cpu_threads) lists all the others: a key added to the config but not to dvc.yaml would change a
    model without `dvc repro` noticing."""
    import dataclasses
    from pathlib import Path

    import yaml

    where = {"device", "cpu_threads"}
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    for name, sec in {"embed": "embed", "collab": "collab", "identifiers": "ids", "train": "train"}.items():
        listed = [p for p in stages[name]["params"] if isinstance(p, str)]
        fields = {f.name for f in dataclasses.fields(type(getattr(Params(), sec)))}
        keys = {p.split(".", 1)[1] for p in listed if p.startswith(sec + ".")}
        assert keys == fields - where, f"dvc.yaml stage {name!r} leaves out {sorted(fields - where - keys)}"
