"""The image parts of a chat's messages: where each is (`messages[0].content[1]`), and the check
every one passes before the 200 (user turns only, the count, a data URL that decodes)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.errors import invalid_request
from gateway.images.source import check_count, check_source
from gateway.protocol.parts import ImagePart, Message


def image_parts(messages: Sequence[Message]) -> list[tuple[str, ImagePart]]:
    """Every image part of the history, in order, with the path that names it."""
    return [(f"messages[{i}].content[{j}]", part) for i, m in enumerate(messages) for j, part in m.image_parts()]


def check_image_parts(messages: Sequence[Message]) -> None:
    count = 0
    for i, message in enumerate(messages):
        for j, part in message.image_parts():
            where = f"messages[{i}].content[{j}]"
            if message.role != "user":
                raise invalid_request(
                    f"'{where}': images can be sent in user messages only, not in '{message.role}' ones.", param=where
                )
            count += 1
            check_count(count, where)
            check_source(part.image_url.url, where)
