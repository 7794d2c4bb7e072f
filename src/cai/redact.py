"""Secret redaction: API keys from the environment never reach a file, a log line or an error message."""

from __future__ import annotations

import os

SECRET_ENV = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")


def redact(text: str) -> str:
    """Replace any API key found in the environment with ***."""
    for var in SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text
