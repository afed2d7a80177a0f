"""aiogram's models take their Bot in one step (manager_bot/bot_binding.py).

What matters is what code using aiogram sees: the same Bot on every model, nested ones
included, whichever way a model is made. So the same script runs on stock aiogram and
on the manager's, each in a fresh interpreter, and their findings must be equal.
"""

from __future__ import annotations

import json

from tests.unit.test_lazy_aiogram import python

# Each way aiogram makes models (an update it receives, a method's answer, a method, a
# copy, model_construct, rebinding with as_), and models of ours on aiogram's base with
# a private attribute or a post-init of their own; every model reached is recorded as
# (where, class, its private attributes with each bot named).
FINDINGS = """
import json, sys
if sys.argv[1] == "manager":
    import manager_bot  # noqa: F401  (installs the import hook first)
from typing import Any
from pydantic import BaseModel, PrivateAttr
from aiogram.methods import Response, SendMessage
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup, Message, TelegramObject, Update

BOTS = {}
def named(value):
    return BOTS.setdefault(id(value), f"bot{len(BOTS)}") if value is not None else None

class Tagged(TelegramObject):
    text: str
    _tag: str = PrivateAttr(default="tagged")

class Counted(TelegramObject):
    text: str
    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        object.__setattr__(self, "text", self.text + " (counted)")

findings = []
def walk(where, value):
    if isinstance(value, BaseModel):
        private = {k: named(v) if k == "_bot" else v
                   for k, v in (value.__pydantic_private__ or {}).items()}
        findings.append([where, type(value).__name__, private, value.bot is value._bot])
        for name in type(value).model_fields:
            walk(f"{where}.{name}", getattr(value, name))
    elif isinstance(value, list):
        for number, item in enumerate(value):
            walk(f"{where}[{number}]", item)

first, second = object(), object()
user = {"id": 7, "is_bot": False, "first_name": "Ann"}
chat = {"id": 7, "type": "private", "first_name": "Ann"}
keyboard = {"inline_keyboard": [[{"text": "Open", "callback_data": "c:1"}],
                                [{"text": "Site", "url": "https://example.org"}]]}
message = {"message_id": 3, "date": 1700000000, "chat": chat, "from": user,
           "text": "hi there", "entities": [{"type": "bold", "offset": 0, "length": 2}],
           "reply_markup": keyboard,
           "reply_to_message": {"message_id": 2, "date": 1700000000, "chat": chat,
                                "text": "earlier"}}
update = Update.model_validate({"update_id": 1, "message": message}, context={"bot": first})
walk("update", update)
pressed = Update.model_validate(
    {"update_id": 2, "callback_query": {"id": "q", "from": user, "chat_instance": "i",
                                        "data": "c:1", "message": message}},
    context={"bot": second})
walk("pressed", pressed)
answer = Response[Message].model_validate({"ok": True, "result": message}, context={"bot": first})
walk("answer", answer.result)
method = SendMessage(chat_id=7, text="x", reply_markup=InlineKeyboardMarkup.model_validate(keyboard))
walk("method", method)
walk("constructed", Message.model_construct(message_id=1, date=0, chat=None))
walk("copy", answer.result.model_copy())
walk("rebound", answer.result.model_copy().as_(second))
walk("button", InlineKeyboardButton(text="a", callback_data="b"))
walk("tagged", Tagged.model_validate({"text": "t"}, context={"bot": first}))
counted = Counted.model_validate({"text": "t"}, context={"bot": second})
walk("counted", counted)
findings.append(["counted.text", counted.text])
def post_init(model):
    function = model.model_post_init
    if function is BaseModel.model_post_init:
        return "none"
    return "wrapped" if hasattr(function, "__wrapped__") else function.__name__
post_inits = {model.__name__: post_init(model)
              for model in (Message, Update, SendMessage, Response[Message], Tagged, Counted)}
json.dump({"findings": findings, "post_inits": post_inits}, sys.stdout)
"""


def findings(aiogram: str) -> dict[str, object]:
    found: dict[str, object] = json.loads(python(FINDINGS, aiogram))
    return found


def test_every_model_holds_the_same_bot_as_on_stock_aiogram() -> None:
    stock, manager = findings("stock"), findings("manager")
    assert len(stock["findings"]) > 40  # type: ignore[arg-type]
    assert manager["findings"] == stock["findings"]
    # ...and the manager's got there in one step, where that is aiogram's own post-init.
    assert manager["post_inits"] == {
        "Message": "_bind_bot",
        "Update": "_bind_bot",
        "SendMessage": "_bind_bot",
        "Response[Message]": "none",  # not a bot-holding model
        "Tagged": "wrapped",  # a private attribute of its own
        "Counted": "wrapped",  # a post-init of its own
    }
    assert stock["post_inits"]["Message"] == "wrapped"  # type: ignore[index]
