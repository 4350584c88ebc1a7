"""Ledger URLs: which backend a URL names, and how to show one without its password.

A PostgreSQL URL may carry a password in its user part or in a ``password`` query parameter.
Every message, log line and ``repr`` that shows a ledger URL goes through :func:`masked_url`.

    masked_url("postgresql://ledger:s3cret@127.0.0.1:5432/usage")
    # 'postgresql://ledger:***@127.0.0.1:5432/usage'
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["LEDGER_URL_VARIABLE", "masked_url", "sqlite_path"]

LEDGER_URL_VARIABLE = "KOOGALLERY_LEDGER_URL"
"""The setting that holds the ledger URL; error messages name it so a reader knows what to fix."""

_MASK = "***"
_SQLITE_PREFIX = "sqlite:///"


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; the rest stays readable for diagnosis."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a URL that cannot be parsed>"

    netloc = parts.netloc
    user_info, at, host = netloc.rpartition("@")
    if at and ":" in user_info:
        user = user_info.split(":", 1)[0]
        netloc = f"{user}:{_MASK}@{host}"

    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key.lower() == "password" for key, _ in pairs):
        masked = [(key, _MASK if key.lower() == "password" else value) for key, value in pairs]
        query = urlencode(masked, safe="*")

    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///path`` URL: relative after three slashes, absolute after
    four, and ``:memory:`` for a private in-memory database."""
    if not url.startswith(_SQLITE_PREFIX) or len(url) == len(_SQLITE_PREFIX):
        raise ValueError(f"{url!r} is not of the form sqlite:///path/to/ledger.db")
    return url[len(_SQLITE_PREFIX) :]
