"""Bearer token → user id. JWT (HS256 with ``JWT_SECRET`` or RS256 with ``JWT_PUBLIC_KEY``); ``sub`` is the id.

With neither key set, auth is off: every request is the one local user, and ``create_app`` logs a warning.
An app that mounts the gateway may name the user its own way instead (``user_loader``, see ``service.gateway``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jwt
from flask import g, request

from service.config import Settings
from service.errors import Unauthorized

LOCAL_USER = "local"


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
            raise Unauthorized("A bearer token is required.")
        try:
            claims = jwt.decode(
                token.strip(),
                self.key,
                algorithms=self.algorithms,
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired.") from None
        except jwt.PyJWTError:
            raise Unauthorized("The token is not valid.") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("The token names no user.")
        return Identity(subject, claims.get(self.settings.admin_claim) is True)


def current_identity(auth: Authenticator) -> Identity:
    """The request's identity, checked once per request and kept on ``g`` (the limiter asks too)."""
    identity: Identity | None = g.get("identity")
    if identity is None:
        identity = auth.identity_for(request.headers.get("Authorization"))
        g.identity = identity
    return identity


def current_user(auth: Authenticator) -> str:
    return current_identity(auth).user_id
