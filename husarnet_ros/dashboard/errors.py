"""The kinds of refusal the Dashboard's service layer raises; the API maps each to one HTTP status.

Every message is a sentence a person can act on. "Not found" is also what an account gets for an object that
exists but is not theirs to see: the answer never hints that it exists.
"""

from __future__ import annotations

from ..core.errors import HusarnetError


class DashboardError(HusarnetError):
    """Base of the refusals below."""


class NotFound(DashboardError):
    """No such object, or none this account may see (HTTP 404)."""


class Conflict(DashboardError):
    """The change collides with what exists: a name taken, a limit reached (HTTP 409)."""


class Forbidden(DashboardError):
    """The account sees the object but its role does not allow this change (HTTP 403)."""


class Invalid(DashboardError):
    """A value that breaks a rule (a username, a name, a password): the message says which (HTTP 422)."""


class Unauthenticated(DashboardError):
    """No valid credentials: wrong password, unknown or expired token or session (HTTP 401)."""
