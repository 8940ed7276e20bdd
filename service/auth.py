"""Bearer token → user id. JWT (HS256 with ``JWT_SECRET`` or RS256 with ``JWT_PUBLIC_KEY``); ``sub`` is the id.

With neither key set, auth is off: every request is the one local user, and ``create_app`` logs a warning.
An app that mounts the gateway may name the user its own way instead (``user_loader``, see ``service.gateway``).

Only the configured algorithm is accepted: a token that says ``alg: none``, or HS256 where the key is RS256's
public key (the key-confusion attack), is refused before any signature is checked. Every refusal is ``401
unauthorized`` with ``details.reason`` saying which check failed and RFC 6750's ``WWW-Authenticate`` header.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jwt
from flask import g, request

from service.config import Settings
from service.errors import Unauthorized

LOCAL_USER = "local"
# PyJWT's refusals, most specific first (several derive from others), as (reason, message)
_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "The token has expired."),
    (jwt.ImmatureSignatureError, "not_yet_valid", "The token is not valid yet."),
    (jwt.InvalidAudienceError, "wrong_audience", "The token is not meant for this service (audience)."),
    (jwt.InvalidIssuerError, "wrong_issuer", "The token comes from an issuer this service does not trust."),
    (jwt.MissingRequiredClaimError, "missing_claim", "The token lacks a required claim."),
    (jwt.InvalidAlgorithmError, "algorithm_not_allowed", "The token is signed with an algorithm not accepted here."),
    (jwt.InvalidSignatureError, "bad_signature", "The token's signature does not match."),
    (jwt.DecodeError, "malformed", "The token is not a well-formed JWT."),
)


def refused(reason: str, message: str) -> Unauthorized:
    """``401 unauthorized`` naming the failed check, with the header RFC 6750 asks for."""
    error = Unauthorized(message, {"reason": reason})
    if reason == "missing":
        error.headers["WWW-Authenticate"] = "Bearer"
    else:
        error.headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{message}"'
    return error


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    admin: bool = False  # may read every user's usage


class Authenticator:
    def __init__(self, settings: Settings, user_loader: Callable[[], str | None] | None = None) -> None:
        self.settings = settings
        self.user_loader = user_loader
        if settings.jwt_public_key:
            self.key: str | None = settings.jwt_public_key
            self.algorithms = ["RS256"]
        elif settings.jwt_secret:
            self.key = settings.jwt_secret
            self.algorithms = ["HS256"]
        else:
            self.key = None
            self.algorithms = []

    @property
    def enabled(self) -> bool:
        return self.key is not None or self.user_loader is not None

    def user_for(self, authorization: str | None) -> str:
        """The user id that the host app's ``user_loader`` names, or that the ``Authorization`` header's bearer
        token proves; else raise ``Unauthorized``."""
        return self.identity_for(authorization).user_id

    def identity_for(self, authorization: str | None) -> Identity:
        """The user, and whether the token carries the admin claim (``ADMIN_CLAIM`` set to true). A host app's
        users and the local user are never admins."""
        if self.user_loader is not None:
            user_id = self.user_loader()
            if not user_id:
                raise Unauthorized("Sign in first.")
            return Identity(str(user_id))
        if self.key is None:
            return Identity(LOCAL_USER)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise refused("missing", "A bearer token is required.")
        try:
            claims = jwt.decode(
                token.strip(),
                self.key,
                algorithms=self.algorithms,
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise self._refusal(error) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise refused("missing_claim", "The token names no user.")
        return Identity(subject, claims.get(self.settings.admin_claim) is True)

    @staticmethod
    def _refusal(error: jwt.PyJWTError) -> Unauthorized:
        for kind, reason, message in _REFUSALS:
            if isinstance(error, kind):
                return refused(reason, message)
        return refused("invalid", "The token is not valid.")


def current_identity(auth: Authenticator) -> Identity:
    """The request's identity, checked once per request and kept on ``g`` (the limiter asks too)."""
    identity: Identity | None = g.get("identity")
    if identity is None:
        identity = auth.identity_for(request.headers.get("Authorization"))
        g.identity = identity
    return identity


def current_user(auth: Authenticator) -> str:
    return current_identity(auth).user_id
