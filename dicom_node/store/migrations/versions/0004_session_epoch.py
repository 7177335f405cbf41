"""server-side session end and login unlock: two columns on user_account

Revision ID: 0004
Revises: 0003

``session_epoch`` counts how often a user's sessions were ended (logout, password change,
disable). The web session cookie carries the epoch it was issued under and is refused once
the row's epoch moved on, so a copied cookie dies at logout instead of at its expiry.
``login_unlocked_at`` is when an administrator last cleared the user's login throttle
(``dicom-node users unlock``); the web process drops failures older than that. Existing
users start at epoch 0 (the server default fills the rows the table copy carries over) and
were never unlocked.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite copies the table to add a NOT NULL column with a default.
    with op.batch_alter_table("user_account", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("login_unlocked_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("user_account", schema=None) as batch_op:
        batch_op.drop_column("login_unlocked_at")
        batch_op.drop_column("session_epoch")
