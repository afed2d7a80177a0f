"""Just enough of Telegram's HTML and Markdown parsers to reject what Telegram rejects.

Returns the plain text (what Telegram counts against the 4096 limit) or raises
MarkupError with Telegram's wording, so clients can test their plain-text
fallback against realistic failures.
"""

from __future__ import annotations

import html
import re

HTML_TAGS = frozenset(
    {
        "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span",
        "tg-spoiler", "a", "code", "pre", "blockquote", "tg-emoji",
    }
)  # fmt: skip
MARKDOWN_V2_RESERVED = "_*[]()~`>#+-=|{}.!"
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)([^>]*)>")


class MarkupError(Exception):
    pass


def check_markup(text: str, parse_mode: str) -> str:
    mode = parse_mode.lower()
    if mode == "html":
        return _check_html(text)
    if mode == "markdownv2":
        return _check_markdown_v2(text)
    if mode == "markdown":
        return _check_markdown(text)
    raise MarkupError(f'unsupported parse_mode "{parse_mode}"')


def _check_html(text: str) -> str:
    stack: list[str] = []
    for match in _TAG.finditer(text):
        closing, name = match.group(1) == "/", match.group(2).lower()
        offset = len(text[: match.start()].encode())
        if name not in HTML_TAGS:
            raise MarkupError(f'Unsupported start tag "{name}" at byte offset {offset}')
        if not closing:
            stack.append(name)
        elif not stack or stack[-1] != name:
            raise MarkupError(
                f'Can\'t find end tag corresponding to start tag "{stack[-1] if stack else name}"'
            )
        else:
            stack.pop()
    if stack:
        raise MarkupError(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    stray = re.search(r"<(?![a-zA-Z/])", text)
    if stray:
        offset = len(text[: stray.start()].encode())
        raise MarkupError(f"Unexpected character '<' at byte offset {offset}")
    return html.unescape(_TAG.sub("", text))


def _check_markdown_v2(text: str) -> str:
    plain: list[str] = []
    open_marks: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            plain.append(text[index + 1])
            index += 2
            continue
        if char in "*_~`":
            if open_marks and open_marks[-1] == char:
                open_marks.pop()
            else:
                open_marks.append(char)
        elif char in MARKDOWN_V2_RESERVED:
            if char in "[]()":
                plain.append(char)  # links: not validated in depth
            else:
                offset = len(text[:index].encode())
                raise MarkupError(
                    f"Character '{char}' is reserved and must be escaped with the preceding "
                    f"'\\' (byte offset {offset})"
                )
        else:
            plain.append(char)
        index += 1
    if open_marks:
        raise MarkupError("Can't find end of the entity")
    return "".join(plain)


def _check_markdown(text: str) -> str:
    plain: list[str] = []
    open_mark: tuple[str, int] | None = None
    for index, char in enumerate(text):
        if char in "*_`":
            if open_mark is None:
                open_mark = (char, index)
            elif open_mark[0] == char:
                open_mark = None
            else:
                plain.append(char)
            continue
        plain.append(char)
    if open_mark is not None:
        offset = len(text[: open_mark[1]].encode())
        raise MarkupError(f"Can't find end of the entity starting at byte offset {offset}")
    return "".join(plain)
