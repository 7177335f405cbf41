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
    ``viewer`` sees studies, models and deliveries; ``uploader`` is a viewer who may also
    upload (the upload page, ``POST /api/predict``); ``admin`` also sees the audit log and
    may upload, retry deliveries, re-run studies and download CSV/JSON; ``sender`` only
    stores over STOW-RS. Refused attempts are audited.
Uploads
    ``upload`` streams the form into the spool (``formdata``), checks everything before
    anything is stored, ingests through ``receive.ingest`` and completes the upload's
    series at once (its end is the sender saying "done"). The study page then refreshes
    its live part from ``/studies/{uid}/progress.json`` with ``static/live.js``, the only
    script (CSP ``script-src 'self'``). API tokens may expire (migration 0007).
Audit
    Logins (successful, failed, rate-limited), logouts, every studies-list view with its
    filter, every study view (page and API), PDF downloads, exports and actions, with user,
    UTC time and client address; the ``dicom-node users`` changes (add, disable, passwd,
    unlock, tokens) too, with client ``cli``.
Sessions
    Signed cookie (Starlette ``SessionMiddleware``, itsdangerous), HttpOnly, SameSite=Strict,
    ``Secure`` when ``[web] https_only``, expiring after ``session_max_age`` (default 8 h).
    The cookie is not enough on its own: it carries the user's session epoch, and the user
    row is re-read on every request. Logout, a password change and disabling the user
    increment the epoch, so a copy of the cookie taken before stops working at once. The
    epoch is per user, not per session: logging out in one browser ends the user's other
    sessions too (one number per user instead of a session table to clean up).
Login throttle
    Failures counted per (client address, username) pair and, with a higher limit, per
    address, in memory with a bounded number of entries (``ratelimit``). Not per username:
    that would let anyone lock a user out. ``dicom-node users unlock NAME`` clears a
    user's pairs through the database (the CLI runs in another process).
``/healthz``
    Anonymous: ``ok`` / ``degraded`` / ``unhealthy`` and neutral booleans, from a cache of
    ``health_cache_seconds``; details (paths, ports, models) for a user or token. Routes
    waiting for model weights make it ``degraded`` (200), not ``unhealthy`` (503).
``/metrics``
    Counts only, no patient data: open without login when ``[web] host`` is a loopback
    address, otherwise it needs a bearer token or a session (``system``).
Positive results
    ``positive_probability >= 0.5`` (the result table keeps no per-model threshold).
Console
    Queue, routes, destinations, models and refused peers (``console``, ``console_pages``)
    show UIDs, AE titles and addresses, no patient data, so looking is not audited; every
    action is (pause, resume, retry, cancel, C-ECHO, testing a file against the routes,
    each edit). Job and delivery rows are changed through their owners only.
Editing the configuration
    ``config_edit`` changes the node's own TOML file with tomlkit (comments kept), validates
    it with the start-up code, writes it atomically and swaps the routes and destinations
    into ``LiveSettings``; forms carry the file's SHA-256, so a stale form cannot undo a
    newer change. The embedded configuration is read-only and the page says how to move
    to a file of one's own.
"""

from dicom_node.web.actions import DefaultActions, WebActions
from dicom_node.web.app import create_app
from dicom_node.web.server import WebServer, start_web

__all__ = ["DefaultActions", "WebActions", "WebServer", "create_app", "start_web"]
