import pytest

from facestream.presets import list_presets
from facestream.settings import load_settings
from facestream.pipeline.errors import ConfigError


def test_shipped_presets_load_and_describe_themselves():
    presets = list_presets()
    assert {"offline", "live", "demo"} <= presets.keys()
    assert all(presets.values()), "every preset has a one-line description"
    for name in presets:
        load_settings(preset=name)
    assert load_settings(preset="live").flow.policy == "latest"
    assert load_settings(preset="offline").flow.policy == "auto"  # block for files, latest for live inputs


def test_base_inheritance_and_overrides_apply_in_order(tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("base: live\noutput:\n  crf: 30\n")
    s = load_settings(config_file=str(cfg), overrides=["output.crf=12", "flow.queue_size=5", "input.backoff_s=[1, 4]"])
    assert s.flow.policy == "latest"  # from the base
    assert s.output.crf == 12  # --set wins over the file
    assert s.flow.queue_size == 5
    assert s.input.backoff_s == (1.0, 4.0)


@pytest.mark.parametrize(
    "override, source, key, words",
    [
        ("flow.queue_size=abc", "--set flow.queue_size=abc", "flow.queue_size", "expected an integer, got 'abc'"),
        ("flow.nope=1", "--set flow.nope=1", "flow.nope", "unknown key 'nope'"),
        ("flow.policy=sometimes", "--set flow.policy=sometimes", "flow.policy", "'sometimes'"),
        ("output.crf=99", "--set output.crf=99", "output.crf", "99"),
        ("device=tpu", "--set device=tpu", "device", "'tpu'"),
        ("input.realtime=maybe", "--set input.realtime=maybe", "input.realtime", "true or false"),
    ],
)
def test_bad_overrides_name_source_key_and_value(override, source, key, words):
    with pytest.raises(ConfigError) as err:
        load_settings(preset="offline", overrides=[override])
    msg = str(err.value)
    assert f"in {source}" in msg and f"at {key}" in msg and words in msg
    assert "\n" not in msg


def test_bad_value_in_a_file_names_the_file(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("flow:\n  queue_size: -3\n")
    with pytest.raises(ConfigError, match=rf"in {cfg} at flow.queue_size: must be > 0, got -3"):
        load_settings(config_file=str(cfg))


def test_value_from_base_preset_is_blamed_on_the_right_file(tmp_path):
    cfg = tmp_path / "child.yaml"
    cfg.write_text("base: offline\nflow:\n  policy: 3\n")
    with pytest.raises(ConfigError, match="child.yaml at flow.policy"):
        load_settings(config_file=str(cfg))


def test_broken_yaml_names_file_and_line(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("flow:\n  queue_size: 4\n bad indent: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML \(line \d+\)"):
        load_settings(config_file=str(cfg))


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="no preset named 'fast'.*offline"):
        load_settings(preset="fast")


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("blend.feather=0.7", "blend.feather", "0.7"),
        ("blend.padding=-0.1", "blend.padding", "-0.1"),
        ("detector.max_faces=-1", "detector.max_faces", "-1"),
        ("detector.upsample=-2", "detector.upsample", "-2"),
        ("tracker.beta=-1", "tracker.beta", "-1.0"),
        ("tracker.coast_frames=-1", "tracker.coast_frames", "-1"),
        ("select.rechoose_s=-3", "select.rechoose_s", "-3.0"),
        ("input.end=0", "input.end", "0.0"),
        ("identity.reid_s=-1", "identity.reid_s", "-1.0"),
        ("models.threads=0", "models.threads", "0"),
    ],
)
def test_every_error_names_its_own_key_and_value(override, key, value):
    with pytest.raises(ConfigError) as err:
        load_settings(overrides=[override])
    assert f"in --set {override} at {key}: " in str(err.value)
    assert str(err.value).endswith(f", got {value}")


def test_option_lists_come_from_one_place():
    """The encoder's speed presets are the settings' presets: every one the encoder knows loads."""
    from typing import get_args

    from facestream.stages.encoder import EncoderSettings, SpeedPreset

    for preset in get_args(SpeedPreset):
        assert load_settings(overrides=[f"output.preset={preset}"]).output.preset == preset
    assert load_settings(overrides=["output.preset=placebo"]).output.encoder() == EncoderSettings(preset="placebo")
