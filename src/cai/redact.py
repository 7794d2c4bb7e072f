"""Secret redaction: API keys from the environment and the credentials written into URLs never reach a file, a
log line or an error message."""

from __future__ import annotations

import functools
import os
import re
from urllib.parse import unquote_plus

SECRET_ENV = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")
MASK = "***"
# A URL in free text (an error message, an argument): up to a blank or a quote, less trailing punctuation.
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>`]*[^\s'\"<>`.,:;)\]]", re.IGNORECASE)
# Its userinfo: everything between `//` and the last `@` of the authority.
_USERINFO = re.compile(r"^([^:/?#]*:)?//[^/?#]*@")
# A query parameter is a credential when its name, lower-cased without - _ and ., contains one of these
# (api-key, apikey, access_token, client_secret, password, sig, X-Amz-Signature, auth, …).
_SECRET_NAME = re.compile(r"key|token|secret|passw|pwd|auth|sig|credential|session")


def clean_url(url: str) -> str:
    """`url` as it may be stored or shown: its userinfo (`user:KEY@`) and the values of secret-looking query
    parameters (`?api-key=…`) become ***, and so does any API key of the environment in it (`redact`). A URL
    without credentials is returned as it is, so the same endpoint with another key has the same clean URL
    (the call cache and the resume fingerprint name endpoints by it)."""
    return redact(_strip_credentials(url))


def redact(text: str) -> str:
    """Replace any API key found in the environment (as written or percent-encoded) and the credentials of
    every URL in `text` (see `clean_url`) with ***."""
    text = _URL.sub(lambda m: _strip_credentials(m.group()), text)
    for var in SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = _encodings(value).sub(MASK, text)
    return text


def _strip_credentials(url: str) -> str:
    """`url` with its userinfo and its secret-looking query values replaced by ***; the rest as written."""
    url = _USERINFO.sub(lambda m: f"{m.group(1) or ''}//{MASK}@", url, count=1)
    head, sep, query = url.partition("?")
    if not sep:
        return url
    query, hash_, fragment = query.partition("#")
    params = [_mask_param(p) for p in query.split("&")]
    return f"{head}?{'&'.join(params)}{hash_}{fragment}"


def _mask_param(param: str) -> str:
    name, eq, _ = param.partition("=")
    plain = re.sub(r"[-_.]", "", unquote_plus(name).lower())
    return f"{name}={MASK}" if eq and _SECRET_NAME.search(plain) else param


@functools.lru_cache(maxsize=16)
def _encodings(value: str) -> re.Pattern[str]:
    """`value` as written or percent-encoded, wholly or in part (either hex case; `+` for a space)."""
    chars = []
    for ch in value:
        encoded = "".join(f"%{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
        chars.append(f"(?:{re.escape(ch)}|(?i:{re.escape(encoded)})" + (r"|\+)" if ch == " " else ")"))
    return re.compile("".join(chars))
