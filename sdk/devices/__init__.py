"""The device-profile registry: `get`, `list`, `register`.

Built-in profiles are the TOML files beside this module; users add their own with
`register(path_or_profile)` or an entry point in the `edge_sdk.devices` group that returns a
`DeviceProfile`, a TOML path, or a list of either.
"""
from __future__ import annotations

import builtins
from importlib import metadata
from pathlib import Path

from sdk.devices.profile import DeviceProfile
from sdk.core.errors import ProfileError, UnknownDeviceError

__all__ = ["DeviceProfile", "get", "list", "register", "unregister"]

ENTRY_POINT_GROUP = "edge_sdk.devices"
_BUILTIN_DIR = Path(__file__).parent

_profiles: dict[str, DeviceProfile] = {}
_names: dict[str, str] = {}  # lower-cased id or alias -> id
_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for path in sorted(_BUILTIN_DIR.glob("*.toml")):
        register(path)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            provided = ep.load()
            provided = provided() if callable(provided) and not isinstance(provided, DeviceProfile) else provided
        except Exception as exc:
            raise ProfileError(f"entry point {ep.name!r} in group {ENTRY_POINT_GROUP} failed to load: {exc}") from exc
        items = provided if isinstance(provided, (builtins.list, tuple)) else [provided]
        for item in items:
            register(item)


def register(profile: DeviceProfile | str | Path, *, replace: bool = False) -> DeviceProfile:
    """Add a profile (object or TOML path). Refuses an id or alias already taken unless `replace`.

    >>> import sdk
    >>> p = sdk.devices.get("intel-cpu")
    >>> import dataclasses
    >>> mine = dataclasses.replace(p, id="my-laptop", aliases=("laptop",))
    >>> sdk.devices.register(mine).id
    'my-laptop'
    >>> sdk.devices.get("LAPTOP").id
    'my-laptop'
    >>> sdk.devices.unregister("my-laptop")
    """
    if not isinstance(profile, DeviceProfile):
        profile = DeviceProfile.from_toml(profile)
    _ensure_loaded()  # built-ins first, so a user profile cannot silently shadow one
    taken = {n.lower(): _names[n.lower()] for n in profile.names if n.lower() in _names}
    clashes = {n: owner for n, owner in taken.items() if owner != profile.id}
    if (clashes or profile.id in _profiles) and not replace:
        owner = clashes or {profile.id: profile.id}
        raise ProfileError(
            f"cannot register device {profile.id!r}: name(s) {', '.join(owner)} already used by "
            f"{', '.join(sorted(set(owner.values())))}. Pass replace=True to override."
        )
    if profile.id in _profiles:
        unregister(profile.id)
    for name, owner in clashes.items():
        unregister(owner)
    _profiles[profile.id] = profile
    for name in profile.names:
        _names[name.lower()] = profile.id
    return profile


def unregister(device_id: str) -> None:
    """Remove a profile and its aliases (mainly for tests and notebooks)."""
    profile = _profiles.pop(device_id, None)
    if profile is not None:
        for name in profile.names:
            _names.pop(name.lower(), None)


def get(name: str | DeviceProfile) -> DeviceProfile:
    """Look a device up by id or alias, case-insensitively.

    >>> import sdk
    >>> sdk.devices.get("Jetson").id
    'jetson-orin-nano'
    """
    if isinstance(name, DeviceProfile):
        return name
    _ensure_loaded()
    key = str(name).strip().lower()
    if key not in _names:
        raise UnknownDeviceError(str(name), sorted(_names))
    return _profiles[_names[key]]


def list() -> builtins.list[DeviceProfile]:  # noqa: A001 - mirrors the issue's `sdk.devices.list()`
    """Every registered profile, sorted by id.

    >>> import sdk
    >>> "android-arm64" in [d.id for d in sdk.devices.list()]
    True
    """
    _ensure_loaded()
    return sorted(_profiles.values(), key=lambda p: p.id)
