"""cluster mode: the cluster_member table (role processes and their heartbeats)

Revision ID: 0008
Revises: 0007

In cluster mode every role process (receive, worker, dispatch, web) keeps a row here and
refreshes ``seen_at`` every ``cluster.heartbeat_seconds``. A job whose worker has no fresh
row was abandoned (a SIGKILLed process, a lost host): the sweep puts it back in its queue
and another worker of that model may take it over. The embedded mode never writes here.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_member",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_cluster_member_seen_at", "cluster_member", ["seen_at"])


def downgrade() -> None:
    op.drop_index("ix_cluster_member_seen_at", table_name="cluster_member")
    op.drop_table("cluster_member")
