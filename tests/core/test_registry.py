from __future__ import annotations

from typing import Any

import pytest
from pydantic import Field

from pymgr import Identity, Module, action, register
from pymgr.core.registry import Registry, RegistryError, registered_in
from pymgr.errors import NotFound


class Firewall(Module):
    """Open and close ports."""

    name = "firewall"

    @action(allow=["group:www-data"], dangerous=True)
    async def allow_port(self, port: int = Field(ge=1, le=65535), proto: str = "tcp") -> str:
        """Open one port."""
        return f"{proto}/{port}"

    @action(name="list", read_only=True)
    def list_rules(self, caller: Identity) -> list[str]:
        return []

    def helper(self) -> None:  # not an action
        return None


def test_actions_get_schemas_docs_and_options() -> None:
    registry = Registry()
    registry.add(Firewall())
    spec = registry.get("firewall", "allow_port")
    assert spec.qualname == "firewall.allow_port"
    assert spec.is_async and spec.doc == "Open one port."
    assert spec.options.allow == ("group:www-data",)
    schema = spec.params_model.model_json_schema()
    assert schema["properties"]["port"]["minimum"] == 1
    assert schema["properties"]["port"]["maximum"] == 65535
    assert schema["required"] == ["port"]
    listing = registry.get("firewall", "list")
    assert listing.identity_param == "caller" and not listing.is_async
    assert "caller" not in listing.params_model.model_json_schema().get("properties", {})
    with pytest.raises(
        NotFound, match=r"^module 'firewall' has no action 'helper'; actions: allow_port, list$"
    ):
        registry.get("firewall", "helper")


def test_unknown_module_names_what_exists() -> None:
    registry = Registry()
    registry.add(Firewall())
    with pytest.raises(NotFound, match=r"^no module named 'nope'; modules: firewall$") as info:
        registry.get("nope", "x")
    assert info.value.details == {"module": "nope", "modules": ["firewall"]}


def test_duplicate_module_name_is_an_error() -> None:
    class Other(Module):
        name = "firewall"

    registry = Registry()
    registry.add(Firewall())
    with pytest.raises(
        RegistryError, match=r"^duplicate module name 'firewall': .*Other and .*Firewall; rename one"
    ):
        registry.add(Other())


def test_module_without_name_is_an_error() -> None:
    class Nameless(Module):
        pass

    with pytest.raises(RegistryError, match=r"^.*Nameless has no `name`; set a class attribute"):
        Registry().add(Nameless())


def test_var_positional_is_refused() -> None:
    class Bad(Module):
        name = "bad"

        @action
        async def run(self, *args: Any) -> None:
            return None

    with pytest.raises(RegistryError, match=r"^bad\.run: \*args is not allowed"):
        Registry().add(Bad())


def test_two_methods_with_one_action_name_is_an_error() -> None:
    class Twice(Module):
        name = "twice"

        @action(name="go")
        async def a(self) -> None:
            return None

        @action(name="go")
        async def b(self) -> None:
            return None

    with pytest.raises(RegistryError, match=r"^module 'twice' defines action 'go' twice$"):
        Registry().add(Twice())


def test_register_collects_classes_by_python_module() -> None:
    @register
    class Registered(Module):
        name = "registered"

    assert Registered in registered_in(__name__)
    with pytest.raises(TypeError, match=r"^@register decorates a pymgr.Module subclass"):
        register(object)  # type: ignore[type-var]


def test_describe_lists_modules_and_actions() -> None:
    registry = Registry()
    registry.add(Firewall())
    [module] = registry.describe()
    assert module["name"] == "firewall" and module["doc"] == "Open and close ports."
    assert [a["name"] for a in module["actions"]] == ["allow_port", "list"]
    assert module["actions"][1]["read_only"] is True
    # dangerous: what a front end asks to confirm; off unless the action says so
    assert [a["dangerous"] for a in module["actions"]] == [True, False]


def test_the_params_schema_is_made_once_and_each_caller_gets_its_own_copy() -> None:
    registry = Registry()
    registry.add(Firewall())
    spec = registry.get("firewall", "allow_port")
    first = registry.describe()[0]["actions"][0]["params"]
    assert first == spec.params_model.model_json_schema()
    assert spec._params_schema is not None  # kept: the next listing does not build it again
    first["properties"].clear()  # a caller's change stays its own
    assert registry.describe()[0]["actions"][0]["params"] == spec.params_model.model_json_schema()


class Gauge(Module):
    name = "gauge"

    @action
    async def set(self, level: float) -> float:
        return level


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999", "Infinity"])
def test_a_float_param_is_finite_whatever_the_text_it_comes_from(text: str) -> None:
    # The legacy protocol's key:value params are strings: "1e999" must not become inf.
    registry = Registry()
    registry.add(Gauge())
    model = registry.get("gauge", "set").params_model
    assert model.model_validate({"level": "1.5"}).level == 1.5  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="finite number"):
        model.model_validate({"level": text})
