"""The admin page: history, audit and operations of the node, behind a login.

``create_app`` builds the FastAPI application (server-rendered Jinja2 pages, a JSON API under
``/api``, ``/healthz`` and ``/metrics``); ``start_web`` serves it with uvicorn in a thread of
the node process. Nothing here talks DICOM on the network: the page reads what the receive,
job and delivery steps recorded in the database, and its actions only change rows that those
steps pick up.
"""

from dicom_node.web.actions import DefaultActions, WebActions
from dicom_node.web.app import create_app
from dicom_node.web.server import WebServer, start_web

__all__ = ["DefaultActions", "WebActions", "WebServer", "create_app", "start_web"]
