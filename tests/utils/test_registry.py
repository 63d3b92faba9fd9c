"""The registry helper every kind of plug-in uses: registration, lookup by name or ``_target_``, building
from a config node, and the error messages (which must name the config key and the known names)."""

from __future__ import annotations

import pytest

from src.utils.registry import Registry, RegistryError, import_path


class Alpha:
    def __init__(self, size: int, scale: float = 1.0) -> None:
        self.size, self.scale = size, scale


class Beta(Alpha):
    pass


def _registry() -> Registry[type[Alpha]]:
    reg: Registry[type[Alpha]] = Registry("widget", config_key="model.widget", meta_keys=("label",))
    reg.register("alpha", targets=["legacy.pkg.Alpha"])(Alpha)
    reg.add("beta", Beta)
    reg.add("beta_too", Beta)  # an alias: same class, second name
    return reg


def test_lookup_in_registration_order_and_by_target() -> None:
    reg = _registry()
    assert reg.keys() == ["alpha", "beta", "beta_too"] and list(reg) == reg.keys() and len(reg) == 3
    assert reg["alpha"] is Alpha and reg.get("beta_too") is Beta and "beta" in reg and "gamma" not in reg
    assert reg.name_of_target(import_path(Alpha)) == "alpha"
    assert reg.name_of_target("legacy.pkg.Alpha") == "alpha"
    # an alias keeps the first name for its import path
    assert reg.name_of_target(f"{__name__}.Beta") == "beta"
    assert reg.targets() == sorted([f"{__name__}.Alpha", "legacy.pkg.Alpha", f"{__name__}.Beta"])


def test_resolve_prefers_target_then_name_keys() -> None:
    reg = _registry()
    assert reg.resolve("beta") == "beta"
    assert reg.resolve({"_target_": f"{__name__}.Beta", "name": "alpha"}) == "beta"
    assert reg.resolve({"name": "alpha", "size": 1}) == "alpha"


def test_build_strips_build_and_meta_keys() -> None:
    reg = _registry()
    obj = reg.build({"_target_": f"{__name__}.Alpha", "_partial_": True, "name": "alpha", "label": "x", "size": 3})
    assert type(obj) is Alpha and (obj.size, obj.scale) == (3, 1.0)
    obj = reg.build({"name": "beta", "size": 2}, scale=0.5)
    assert type(obj) is Beta and (obj.size, obj.scale) == (2, 0.5)


def test_errors_name_the_config_key_and_the_known_names() -> None:
    reg = _registry()
    with pytest.raises(
        RegistryError, match=r"^model\.widget: 'gamma' is not a known widget; known: alpha, beta, beta_too$"
    ):
        reg.get("gamma")
    with pytest.raises(ValueError, match=r"model\.widget\._target_='x\.Y' is not a known widget; known targets: "):
        reg.resolve({"_target_": "x.Y"})
    with pytest.raises(RegistryError, match=r"model\.widget needs `_target_` or `name` naming a widget"):
        reg.resolve({"size": 1})
    with pytest.raises(TypeError, match=r"model\.widget \(widget 'alpha'\): .*unexpected keyword argument 'colour'"):
        reg.build({"name": "alpha", "size": 1, "colour": "red"})


def test_a_taken_name_cannot_be_reused_by_another_object() -> None:
    reg = _registry()
    reg.add("alpha", Alpha)  # the same object again: a no-op (module reloads)
    with pytest.raises(RegistryError, match=r"two widgets are registered as 'alpha'"):
        reg.add("alpha", Beta)
