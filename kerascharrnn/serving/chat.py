"""A conversation as one plain transcript, for the clients that only speak chat (OpenAI's chat completions,
Ollama's /api/chat). A character model continues text: it is no assistant. The messages become a transcript the
model continues, and its continuation is cut where the next speaker's turn would begin:

    {system message}

    User: {user message}

    Assistant: {assistant message}

    Assistant: (the model writes from here)

A system message is written as it is, without a speaker. A message's `name` (OpenAI's), if given, is its speaker;
else the role's (User, Assistant, Tool). When the last message is the assistant's, the model continues that
message (no new turn: a frontend's "continue" or prefill). The continuation ends before a new line that starts
with a speaker of the conversation followed by a colon.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

from kerascharrnn.serving.errors import ClientError

SPEAKERS = {"user": "User", "assistant": "Assistant", "tool": "Tool", "function": "Tool"}
SYSTEM_ROLES = ("system", "developer")
TEMPLATE = "{system}\n\nUser: {user}\n\nAssistant: {assistant}\n\n...\n\nAssistant: "  # shown by /api/show


def message_text(content: Any, field: str) -> str:
    """A message's text: a string, or OpenAI's list of parts (the text parts, joined; images and audio cannot
    reach a character model)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif not isinstance(part, dict):
                raise ClientError(400, f"{field}: a content part must be an object", param=field)
        return "\n".join(texts)
    raise ClientError(400, f"{field}: a string or a list of content parts", param=field)


def transcript(messages: Sequence[Tuple[str, str, str]]) -> Tuple[str, List[str]]:
    """The prompt for a conversation and the stop strings that end the model's turn.

    Args:
      messages: (role, name or "", text) in order.
    Returns:
      (the transcript, ending where the model writes), (the speakers' turn openings, "\\nName:").
    """
    if not messages:
        raise ClientError(400, "messages: an empty list", param="messages")
    parts, speakers = [], {"User", "Assistant"}
    for index, (role, name, text) in enumerate(messages):
        role = role.lower()
        if role not in SYSTEM_ROLES and role not in SPEAKERS:
            raise ClientError(400, f"messages.{index}.role: {role[:40]!r} is not one of system, developer, user,"
                                   " assistant, tool", param="messages")
        if role in SYSTEM_ROLES:
            parts.append(text)
            continue
        speaker = (name or SPEAKERS[role]).strip().replace("\n", " ")[:100] or SPEAKERS[role]
        speakers.add(speaker)
        parts.append(f"{speaker}: {text}")
    last_role = messages[-1][0].lower()
    if last_role == "assistant":  # the model continues the assistant's message
        prompt = "\n\n".join(parts)
    else:
        prompt = "\n\n".join(parts + ["Assistant: "])
    return prompt, [f"\n{speaker}:" for speaker in sorted(speakers)]
