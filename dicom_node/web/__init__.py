"""The admin page: history, audit and operations of the node, behind a login.

``create_app`` builds the FastAPI application (server-rendered Jinja2 pages, a JSON API under
``/api``, ``/healthz`` and ``/metrics``); ``start_web`` serves it with uvicorn in a thread of
the node process. Nothing here talks DICOM on the network: the page reads what the receive,
job and delivery steps recorded in the database, and its actions only change rows that those
steps pick up.

Decisions
---------
Patient data in URLs
    Only UIDs. The studies filter is POSTed and kept on the server under a random key held in
    the session (``filters``); page, sort and direction stay in the query string. The API's
    free-text search is ``POST /api/studies/search``. Access logs therefore hold no names.
Roles
    ``viewer`` sees studies, models and deliveries; ``admin`` also sees the audit log and may
    retry deliveries, re-run studies and download CSV/JSON. Refused attempts are audited.
Audit
    Logins (successful, failed, rate-limited), logouts, every studies-list view with its
    filter, every study view (page and API), PDF downloads, exports and actions, with user,
    UTC time and client address.
Sessions
    Signed cookie (Starlette ``SessionMiddleware``, itsdangerous), HttpOnly, SameSite=Strict,
    ``Secure`` when ``[web] https_only``; the user row is re-read on every request, so
    disabling a user or changing a password ends their sessions. The cookie is stateless:
    logging out clears it in the browser, but a copy taken before stays valid until
    ``session_max_age`` (default 8 h) unless the password is changed.
``/metrics``
    Counts only, no patient data: open without login when ``[web] host`` is a loopback
    address, otherwise it needs a bearer token or a session (``system``).
Positive results
    ``positive_probability >= 0.5`` (the result table keeps no per-model threshold).
"""

from dicom_node.web.actions import DefaultActions, WebActions
from dicom_node.web.app import create_app
from dicom_node.web.server import WebServer, start_web

__all__ = ["DefaultActions", "WebActions", "WebServer", "create_app", "start_web"]
