"""The device-profile registry: built-ins, aliases, strict TOML, user registration."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import sdk
from sdk.devices import DeviceProfile
from sdk.core.errors import ProfileError, UnknownDeviceError

REQUIRED_IDS = {"jetson-orin-nano", "jetson-agx-orin", "apple-ane", "apple-mac-ane", "intel-cpu", "intel-npu",
                "android-arm64", "android-litert"}


def test_builtin_profiles_present():
    ids = {p.id for p in sdk.devices.list()}
    assert REQUIRED_IDS <= ids


@pytest.mark.parametrize("alias,expected", [("jetson", "jetson-orin-nano"), ("ANE", "apple-ane"),
                                            ("iphone", "apple-ane"),
                                            ("Intel", "intel-cpu"), ("android", "android-arm64"),
                                            (" jetson-agx-orin ", "jetson-agx-orin")])
def test_aliases_case_insensitive(alias, expected):
    assert sdk.devices.get(alias).id == expected


def test_every_profile_is_complete():
    for p in sdk.devices.list():
        assert p.format in ("executorch", "coreml", "openvino", "onnx", "litert")
        assert p.sources and all(s.startswith("https://") for s in p.sources), p.id
        assert p.peak_tops and p.memory_bandwidth_gbps > 0 and p.memory_budget_mb > 0
        assert set(p.default_recipe) <= set(p.precisions), p.id
        assert p.agent_transport in ("native", "adb")


def test_unknown_device_lists_known_and_closest():
    with pytest.raises(UnknownDeviceError) as info:
        sdk.devices.get("jetsn-orin")
    msg = str(info.value)
    assert "Did you mean" in msg and "jetson" in msg and "android-arm64" in msg


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "board.toml"
    path.write_text(text)
    return path




def _board_text() -> str:
    src = Path(sdk.devices.__file__).parent / "intel-cpu.toml"
    text = src.read_text().replace('id = "intel-cpu"', 'id = "my-board"')
    return text.replace('aliases = ["intel"]', 'aliases = ["board"]')


def test_register_toml_and_unregister(tmp_path):
    profile = sdk.devices.register(_toml(tmp_path, _board_text()))
    try:
        assert sdk.devices.get("BOARD") is profile
        assert profile.format == "openvino"
    finally:
        sdk.devices.unregister("my-board")
    with pytest.raises(UnknownDeviceError):
        sdk.devices.get("my-board")


def test_typo_in_toml_names_file_and_key(tmp_path):
    path = _toml(tmp_path, _board_text().replace("static_shapes", "static_shape"))
    with pytest.raises(ProfileError) as info:
        sdk.devices.register(path)
    assert str(path) in str(info.value) and "'static_shape'" in str(info.value) and "static_shapes" in str(info.value)


def test_wrong_type_and_bad_format(tmp_path):
    with pytest.raises(ProfileError, match="memory_budget_mb"):
        text = _board_text().replace("memory_budget_mb = 4096", 'memory_budget_mb = "4GB"')
        DeviceProfile.from_toml(_toml(tmp_path, text))
    with pytest.raises(ProfileError, match="format"):
        DeviceProfile.from_toml(_toml(tmp_path, _board_text().replace('format = "openvino"', 'format = "tensorflow"')))


def test_duplicate_alias_refused():
    mine = dataclasses.replace(sdk.devices.get("intel-cpu"), id="other", aliases=("jetson",))
    with pytest.raises(ProfileError, match="already used"):
        sdk.devices.register(mine)


def test_profiles_are_frozen():
    p = sdk.devices.get("jetson")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.format = "coreml"
    with pytest.raises(TypeError):
        p.peak_tops["int8"] = 1.0


def test_roofline_bound():
    p = sdk.devices.get("jetson")
    # 1 GMAC at 20 int8 TOPS = 0.1 ms; 1 MB at 68 GB/s = 0.0147 ms -> compute bound
    assert p.roofline_ms(10**9, 10**6, "int8") == pytest.approx(0.1)
    assert p.roofline_ms(10**9, 10**6, "int4") is None


def test_format_is_valid_iff_a_converter_is_registered(tmp_path):
    import converters
    from sdk.core import formats

    path = _toml(tmp_path, _board_text().replace('format = "openvino"', 'format = "myformat"'))
    with pytest.raises(ProfileError, match="no converter is registered for format 'myformat'"):
        DeviceProfile.from_toml(path)

    @converters.register
    class MyConverter(converters.Converter):
        format = "myformat"

    try:
        assert DeviceProfile.from_toml(path).format == "myformat" and "myformat" in converters.formats()
    finally:
        converters._registry.pop("myformat")
        formats._registered.discard("myformat")
