"""aiogram's Telegram models built on first use (manager_bot/lazy_aiogram.py).

Each case is a fresh interpreter: what matters is which aiogram an import produces.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Every model of aiogram.types and aiogram.methods, as the JSON schemas pydantic makes of
# it for validation and for serialisation (an error's text where it cannot make one).
SCHEMAS = """
import json, sys, warnings
warnings.simplefilter("ignore")
if sys.argv[1] == "deferred":
    import manager_bot  # noqa: F401  (installs the deferral first)
import aiogram.methods, aiogram.types
from pydantic import BaseModel
from manager_bot import lazy_aiogram

schemas = {"deferred": lazy_aiogram.deferred()}
# What aiogram makes per call: the parsed answer of a method.
generics = {"Response[Message]": aiogram.methods.Response[aiogram.types.Message]}
for module in (aiogram.types, aiogram.methods, generics):
    names = module.__all__ if not isinstance(module, dict) else list(module)
    for name in names:
        model = module[name] if isinstance(module, dict) else getattr(module, name)
        if isinstance(model, type) and issubclass(model, BaseModel):
            for mode in ("validation", "serialization"):
                try:
                    schemas[f"{name}/{mode}"] = model.model_json_schema(mode=mode)
                except Exception as error:
                    schemas[f"{name}/{mode}"] = f"{type(error).__name__}: {error}"
json.dump(schemas, sys.stdout)
"""


def python(code: str, *args: str, path: str = str(REPO)) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_manager_gets_aiogram_with_its_models_unbuilt() -> None:
    # If an aiogram upgrade changes the loop we replace, this fails: start-up is slow again.
    out = python(
        "import manager_bot, aiogram\n"
        "from manager_bot import lazy_aiogram\n"
        "print(lazy_aiogram.deferred(), aiogram.types.ChatFullInfo.__pydantic_complete__,"
        " aiogram.methods.SendMessage.__pydantic_complete__,"
        " all(getattr(aiogram.types, hub).__pydantic_complete__ for hub in lazy_aiogram.HUBS))"
    )
    assert out.split() == ["True", "False", "False", "True"]


def test_deferred_models_have_exactly_the_schemas_of_eager_ones() -> None:
    with ThreadPoolExecutor(2) as pool:
        eager, deferred = pool.map(
            lambda mode: json.loads(python(SCHEMAS, mode)), ["eager", "deferred"]
        )
    assert (eager.pop("deferred"), deferred.pop("deferred")) == (False, True)
    assert len(eager) > 1000  # ~600 models, two modes each
    assert [name for name in eager if eager[name] != deferred.get(name)] == []
    assert eager.keys() == deferred.keys()


def test_an_aiogram_without_the_expected_loop_is_imported_unchanged(tmp_path: Path) -> None:
    # A stand-in aiogram whose loop differs (as an upgrade might make it): left alone.
    types = tmp_path / "aiogram" / "types"
    types.mkdir(parents=True)
    (tmp_path / "aiogram" / "__init__.py").write_text("")
    (types / "__init__.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel, ConfigDict

            class Update(BaseModel):
                model_config = ConfigDict(defer_build=True)
                update_id: "Number"

            Number = int
            __all__ = ["Update"]
            _types_namespace = {"Number": Number}

            for _name in __all__:
                globals()[_name].model_rebuild(_types_namespace=_types_namespace)
            """
        )
    )
    out = python(
        "import manager_bot, aiogram.types\n"
        "from manager_bot import lazy_aiogram\n"
        "print(lazy_aiogram.deferred(), aiogram.types.Update.__pydantic_complete__)",
        path=f"{tmp_path}:{REPO}",
    )
    assert out.split() == ["False", "True"]
