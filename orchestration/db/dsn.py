"""Showing a database URL without its secrets, and saying what is wrong with one.

A URL or libpq message may only be shown after it has passed through here.
`mask_dsn` never echoes a part of the URL it cannot parse safely: everything
between `scheme://` and the last '@' is masked (a password may itself hold
'@', '#', ':' or spaces), and so is every query or key=value parameter not
known to be harmless. libpq's own messages quote the URL, or pieces of it
split where a bad character cut it, so they are never shown: `describe_problem`
says what is wrong in words of its own.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

UNPARSEABLE = "<unparseable URL>"
MASK = "***"
URL_SCHEMES = ("postgresql", "postgres")
PERCENT_ENCODE_HINT = (
    "percent-encode '@', '#', '%', '/', ':' and spaces in the user and password (%40, %23, %25, %2F, %3A, %20)"
)
KEYWORD_QUOTING_HINT = "in key=value form, put a value holding spaces or quotes in single quotes ('a b', \\' inside)"

# Connection parameters whose values are safe to show; every other value is masked
# (a misspelt "pasword=" must not be shown either).
SHOWN_PARAMETERS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "sslmode",
        "connect_timeout",
        "application_name",
        "target_session_attrs",
        "load_balance_hosts",
        "gssencmode",
        "channel_binding",
    }
)

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_USER = re.compile(r"[A-Za-z0-9._~\-%]+")
_HOST = r"(?:[A-Za-z0-9._~\-%]+|\[[0-9A-Fa-f:.%]+\])?(?::[0-9]*)?"
_HOSTS = re.compile(rf"{_HOST}(?:,{_HOST})*")
_DBNAME = re.compile(r"/[A-Za-z0-9._~\-%$]*")
_PARAMETER = re.compile(r"[A-Za-z0-9._~\-%+,:/]*")
_KEYWORD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")


def mask_dsn(dsn: str) -> str:
    """The URL (or key=value string) with every secret masked, fit for logs, errors and metadata."""
    text = dsn.strip()
    if "://" in text:
        return _mask_url(text)
    if "=" in text:
        return _mask_keywords(text)
    return UNPARSEABLE


def _mask_url(text: str) -> str:
    scheme, _, rest = text.partition("://")
    if not _SCHEME.fullmatch(scheme):
        return UNPARSEABLE
    userinfo, at, after = rest.rpartition("@")
    # A user is shown only when it is a plain name and a password follows it or none is given.
    user, colon, _ = userinfo.partition(":")
    shown_user = ""
    if at:
        shown_user = f"{user}:{MASK}@" if _USER.fullmatch(user) and colon else MASK + "@"
        if _USER.fullmatch(userinfo) or (_USER.fullmatch(user) and userinfo == user + ":"):
            shown_user = f"{user}@"  # no password given
    if at and not any(c in after for c in "/?") and any(c in userinfo for c in "/?"):
        return UNPARSEABLE  # the last '@' may lie in the path or query: no telling where the host is
    hosts, slash, path_and_query = after.partition("/")
    if slash:
        path, question, raw_query = path_and_query.partition("?")
        path = "/" + path
    else:
        hosts, question, raw_query = after.partition("?")
        path = ""
    query = raw_query if question else None
    if not _HOSTS.fullmatch(hosts):
        host = re.match(r"[A-Za-z0-9.\-]+", hosts)
        return f"{scheme}://{MASK}@{host.group(0)}/{MASK}" if host and at else UNPARSEABLE
    if path and not _DBNAME.fullmatch(path):
        return f"{scheme}://{shown_user}{hosts}/{MASK}"
    shown = f"{scheme}://{shown_user}{hosts}{path}"
    if query is None:
        return shown
    return f"{shown}?{_mask_query(query)}"


def _mask_query(query: str) -> str:
    shown = []
    for parameter in query.split("&"):
        key, equals, value = parameter.partition("=")
        name = unquote(key).strip().lower()
        if name in SHOWN_PARAMETERS and equals and _PARAMETER.fullmatch(value):
            shown.append(f"{key}={value}")
        elif name in SHOWN_PARAMETERS or (_PARAMETER.fullmatch(key) and "pass" not in name):
            shown.append(f"{key}={MASK}")
        else:
            # A password parameter: whatever follows may be the rest of it.
            shown.append(f"{key}={MASK}" if _PARAMETER.fullmatch(key) else MASK)
            break
    return "&".join(shown)


def _mask_keywords(text: str) -> str:
    """key=value pairs as libpq reads them (values bare or single-quoted)."""
    shown, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _KEYWORD.match(text, position)
        if match is None:
            return _host_only(text)
        key = match.group(1).lower()
        value, position = _keyword_value(text, match.end())
        if value is None:
            return _host_only(text)
        shown.append(f"{key}={value if key in SHOWN_PARAMETERS and _PARAMETER.fullmatch(value) else MASK}")
    return " ".join(shown) if shown else UNPARSEABLE


def _keyword_value(text: str, position: int) -> tuple[str | None, int]:
    """The value starting at position and where the next pair starts; None when malformed."""
    if position < len(text) and text[position] == "'":
        value, position = [], position + 1
        while position < len(text):
            char = text[position]
            if char == "\\" and position + 1 < len(text):
                value.append(text[position + 1])
                position += 2
                continue
            if char == "'":
                return "".join(value), position + 1
            value.append(char)
            position += 1
        return None, position
    end = position
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[position:end], end


def _host_only(text: str) -> str:
    """For a key=value string that does not parse: its host alone, when it is a plain name."""
    match = re.search(r"(?:^|\s)host\s*=\s*([A-Za-z0-9._\-]+)(?:\s|$)", text)
    return f"host={match.group(1)} (rest not shown)" if match else UNPARSEABLE


def url_scheme(dsn: str) -> str | None:
    """The scheme of a URL-form DSN, None for the key=value form."""
    scheme, sep, _ = dsn.strip().partition("://")
    return scheme.lower() if sep else None


def looks_unencoded(dsn: str) -> bool:
    """Whether the user or password of a URL likely holds a character that needs percent-encoding."""
    _, sep, rest = dsn.strip().partition("://")
    if not sep:
        return False
    userinfo, at, _ = rest.rpartition("@")
    return bool(at) and ("@" in userinfo or any(c in userinfo for c in "#/ ?") or _bad_percent(userinfo))


def _bad_percent(text: str) -> bool:
    return re.search(r"%(?![0-9A-Fa-f]{2})", text) is not None


def secret_fragments(dsn: str) -> list[str]:
    """Pieces of dsn that may be secret, longest first: the raw user-and-password part
    of a URL, its pieces as libpq may have cut them, and password values."""
    text = dsn.strip()
    candidates: set[str] = set()
    if "://" in text:
        _, _, rest = text.partition("://")
        userinfo, at, _ = rest.rpartition("@")
        if at:
            user, _, password = userinfo.partition(":")
            # A plain user name without a password is no secret (and masking
            # it would mangle every other mention, "postgres" in "postgresql").
            if password or not _USER.fullmatch(user):
                candidates.update({userinfo, password, unquote(password)})
                candidates.update(re.split(r"[@#:/?\s]+", password))
            if not _USER.fullmatch(user):
                candidates.add(user)
    for match in re.finditer(r"pass\w*\s*=\s*('(?:[^'\\]|\\.)*'?|[^&\s]+)", text, re.IGNORECASE):
        value = match.group(1)
        candidates.update({value, value.strip("'"), unquote(value)})
        candidates.update(re.split(r"[@#:/?&\s']+", value))
    return sorted((c for c in candidates if len(c) >= 3), key=len, reverse=True)


def scrub(message: str, dsn: str | None) -> str:
    """message with every secret fragment of dsn masked (a last guard for any text shown)."""
    if not dsn:
        return message
    for fragment in secret_fragments(dsn):
        message = message.replace(fragment, MASK)
    return message
