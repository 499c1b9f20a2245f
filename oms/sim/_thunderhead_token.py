"""The Thunderhead simulator's token endpoint (docs/thunderhead.md, "Token").

Strict where RFC 6749 is: the client authenticates with exactly one method
(§2.3.1), so a client that sends both a Basic header and form credentials, as some
integrations do, is caught here rather than by a real tenant.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from urllib.parse import unquote_plus

from aiohttp import web

from oms.sim import _thunderhead_gate as gate

_GRANT_TYPES = ("client_credentials", "password")
_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="thunderhead"'}


async def token(request: web.Request) -> web.Response:
    """``POST {token_path}``: authenticate the client, check the grant, issue a token."""
    state = request.app[gate.STATE]
    config = state.config
    form = await request.post()
    basic = _basic_credentials(request.headers.get("Authorization", ""))
    in_form = "client_id" in form or "client_secret" in form
    if basic is not None and in_form:
        raise gate.Answer(400, {"error": "invalid_request"})
    if basic is not None:
        method, offered, challenge = "basic", basic, _BASIC_CHALLENGE
    elif in_form:
        offered = (str(form.get("client_id", "")), str(form.get("client_secret", "")))
        method, challenge = "form", None
    else:
        raise gate.Answer(401, {"error": "invalid_client"})
    accepted = config.client_auth in ("either", method)
    if not accepted or offered != (config.client_id, config.client_secret):
        raise gate.Answer(401, {"error": "invalid_client"}, challenge)
    grant_type = form.get("grant_type")
    if not grant_type:
        raise gate.Answer(400, {"error": "invalid_request"})
    if grant_type not in _GRANT_TYPES:
        raise gate.Answer(400, {"error": "unsupported_grant_type"})
    if grant_type == "password":
        user = (str(form.get("username", "")), str(form.get("password", "")))
        if not all(user):
            raise gate.Answer(400, {"error": "invalid_request"})
        if config.username is not None and user != (config.username, config.password):
            raise gate.Answer(400, {"error": "invalid_grant"})  # RFC 6749 5.2
    now = time.monotonic()
    state.tokens = {token: expiry for token, expiry in state.tokens.items() if expiry > now}
    access_token = secrets.token_urlsafe(32)
    state.tokens[access_token] = now + config.token_ttl_s
    ttl = config.token_ttl_s
    expires_in = int(ttl) if ttl.is_integer() else ttl
    return gate.answer(
        request, {"access_token": access_token, "token_type": "bearer", "expires_in": expires_in}
    )


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """``(client_id, client_secret)`` of a Basic header; None without one.

    Both parts are form-urlencoded before encoding (RFC 6749 §2.3.1), so decoded
    after; a header that does not decode offers blanks, which match no client.
    """
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        return ("", "")
    return (unquote_plus(client_id), unquote_plus(secret))
