"""aiogram with its Telegram models built on first use instead of at import.

aiogram.types ends with a loop that builds every one of its ~400 pydantic models
(`model_rebuild`, upstream aiogram#1891): two thirds of the manager's start, about 2 s
of 3 on a quiet 2-core machine. Its models are `defer_build=True` already; the loop is
there to give them the namespace their forward references resolve in. So
aiogram.types runs here with that loop replaced by one that only hands each model the
namespace, and aiogram.methods' models get the same (and are deferred too). Pydantic
then builds a model the first time it validates or serialises one, with the same
result as the eager build (tests/unit/test_lazy_aiogram.py compares every schema).

Anything unexpected (an aiogram whose source no longer holds that loop, a package
without source) imports aiogram unchanged: slower to start, never different.

The same hook hands aiogram.client.context_controller's BotContextController to
bot_binding.py as it is defined, before any model: see there.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import CodeType, ModuleType

from pydantic import BaseModel

from manager_bot.bot_binding import bind_in_one_step

TYPES = "aiogram.types"
METHODS = "aiogram.methods"
METHODS_BASE = "aiogram.methods.base"
CONTEXT_CONTROLLER = "aiogram.client.context_controller"

# The end of aiogram/types/__init__.py, verbatim, and what runs instead.
EAGER_BUILD = """for _entity_name in __all__:
    _entity = globals()[_entity_name]
    if hasattr(_entity, "model_rebuild"):
        _entity.model_rebuild(_types_namespace=_types_namespace)
"""
DEFERRED_BUILD = """for _entity_name in __all__:
    _entity = globals()[_entity_name]
    if hasattr(_entity, "model_rebuild"):
        _entity.__pydantic_parent_namespace__ = _types_namespace
"""


# Built at once all the same: nearly every other model contains them, and one built
# later reuses a complete model's schema but makes its own copy of an unbuilt one's
# (0.1 s here instead of 0.35 s spread over the first updates).
HUBS = ("Message", "Update")


class _DeferredTypesLoader(importlib.machinery.SourceFileLoader):
    """aiogram.types with DEFERRED_BUILD for EAGER_BUILD; compiled on each start (a
    few milliseconds) because its cached bytecode is that of the unchanged source."""

    def exec_module(self, module: ModuleType) -> None:
        super().exec_module(module)
        if deferred():
            for name in HUBS:
                getattr(module, name).model_rebuild()

    def get_code(self, fullname: str) -> CodeType | None:
        source = importlib.util.decode_source(self.get_data(self.path))
        if source.count(EAGER_BUILD) != 1:
            return super().get_code(fullname)
        changed = source.replace(EAGER_BUILD, DEFERRED_BUILD)
        return compile(changed, self.path, "exec", dont_inherit=True)


class _MethodsBaseLoader(importlib.machinery.SourceFileLoader):
    """aiogram.methods.base, with its methods' models deferred like the types': else
    each of the ~170 methods is built when defined (a quarter of the rest of the start)."""

    def exec_module(self, module: ModuleType) -> None:
        super().exec_module(module)
        method = getattr(module, "TelegramMethod", None)
        if method is not None and TYPES in sys.modules and deferred():
            method.model_config["defer_build"] = True  # inherited by each method defined next


class _MethodsLoader(importlib.machinery.SourceFileLoader):
    """aiogram.methods, then the types' namespace for each of its models: those naming
    a type could not be built when defined (the types were not built yet), and
    generic ones (`Response[Message]`, made per call) inherit it."""

    def exec_module(self, module: ModuleType) -> None:
        super().exec_module(module)
        namespace = _deferred_namespace()
        if namespace is None:  # the types were built eagerly, and so were the methods
            return
        for name in getattr(module, "__all__", ()):
            model = getattr(module, name, None)
            if isinstance(model, type) and issubclass(model, BaseModel):
                model.__pydantic_parent_namespace__ = namespace


class _ContextControllerLoader(importlib.machinery.SourceFileLoader):
    """aiogram's BotContextController, handed to bot_binding before any model uses it."""

    def exec_module(self, module: ModuleType) -> None:
        super().exec_module(module)
        controller = getattr(module, "BotContextController", None)
        if isinstance(controller, type):
            bind_in_one_step(controller)


_LOADERS: dict[str, type[importlib.machinery.SourceFileLoader]] = {
    TYPES: _DeferredTypesLoader,
    METHODS: _MethodsLoader,
    METHODS_BASE: _MethodsBaseLoader,
    CONTEXT_CONTROLLER: _ContextControllerLoader,
}


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        loader = _LOADERS.get(fullname)
        if loader is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or type(spec.loader) is not importlib.machinery.SourceFileLoader:
            return None  # not plain source on disk: the usual import
        spec.loader = loader(fullname, spec.loader.path)
        return spec


_FINDER = _Finder()


def install() -> None:
    """Defer aiogram's model builds, and bind the Bot to its models in one step, if
    aiogram is not imported yet (idempotent)."""
    if TYPES not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _deferred_namespace() -> dict[str, object] | None:
    """The namespace DEFERRED_BUILD handed the types, if it ran."""
    update = getattr(sys.modules.get(TYPES), "Update", None)
    namespace = getattr(update, "__pydantic_parent_namespace__", None)
    return namespace if isinstance(namespace, dict) and namespace.get("Update") is update else None


def deferred() -> bool:
    """Whether the imported aiogram builds its models on first use."""
    return _deferred_namespace() is not None
