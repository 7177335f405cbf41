"""API token expiry: ``api_token.expires_at``

Revision ID: 0007
Revises: 0006

A token given to a script (``POST /api/predict``, STOW-RS) may be made to end by itself
(``dicom-node users token NAME --expires-in DAYS``): ``expires_at`` is that moment in UTC,
NULL for a token valid until revoked. Existing tokens keep working (NULL).

The downgrade revokes every token that had an expiry before dropping the column: the
older schema cannot express "valid until", and a token meant to die must not become one
that lives forever.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite copies the table (the same way every later change to it will).
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    tokens = sa.table(
        "api_token", sa.column("revoked", sa.Boolean()), sa.column("expires_at", sa.DateTime())
    )
    op.execute(tokens.update().where(tokens.c.expires_at.is_not(None)).values(revoked=True))
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
