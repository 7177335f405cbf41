"""results outside their model's intended use: two columns on result

Revision ID: 0005
Revises: 0004

A model's manifest may state its intended use (``[scope]``: modality, body part, view,
patient age). A series outside it still gets results, flagged: ``out_of_scope`` says so
(the web list, the study page and ``/metrics`` count on it) and ``scope_reasons`` keeps the
reasons as shown ("patient age 64 years, intended 0-17 years"). Results stored before this
revision were not checked: they start in scope, with no reasons.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite copies the table to add NOT NULL columns with defaults.
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("out_of_scope", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("scope_reasons", sa.JSON(), nullable=False, server_default="[]")
        )


def downgrade() -> None:
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.drop_column("scope_reasons")
        batch_op.drop_column("out_of_scope")
