"""delivery claims: ``delivery.claimed_by``, the dispatcher sending a delivery now

Revision ID: 0009
Revises: 0008

Several dispatchers may run in cluster mode. A dispatcher claims the due deliveries it is
about to send with a conditional UPDATE that sets ``claimed_by`` to its member name (the
embedded node: ``node``); the outcome of the attempt clears it. Another dispatcher leaves
claimed rows alone while their claimer's heartbeat (``cluster_member``) is fresh, and takes
them over when it is not (a SIGKILLed dispatcher, a lost host). Existing rows start
unclaimed (NULL).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite copies the table.
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_column("claimed_by")
