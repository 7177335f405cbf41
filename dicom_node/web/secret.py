"""The key that signs session cookies: from the configuration, or generated once.

A key generated at every start would log everyone out at every restart; a key shipped in
the default configuration would let anyone who has read it forge sessions. So an empty
``[web] secret_key`` means: make a random one on first start and keep it in the database
(table ``node_setting``), which only the node reads.
"""

from __future__ import annotations

import secrets

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store.db import Setting

SECRET_SETTING = "web.secret_key"


def session_secret(configured: str, sessions: sessionmaker[Session]) -> str:
    """The configured key if set, else the stored one, created on first call."""
    if configured:
        return configured
    with sessions() as session:
        row = session.get(Setting, SECRET_SETTING)
        if row is not None:
            return row.value
        value = secrets.token_urlsafe(48)
        session.add(Setting(key=SECRET_SETTING, value=value))
        try:
            session.commit()
        except IntegrityError:
            # Another process started at the same moment and stored its key first: use it.
            session.rollback()
            stored = session.get(Setting, SECRET_SETTING)
            assert stored is not None
            return stored.value
        return value
