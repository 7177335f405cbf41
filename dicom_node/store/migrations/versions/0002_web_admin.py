"""web admin: API tokens, indexes for the studies list and the study timeline

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user_account.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_token_user_id"), ["user_id"], unique=False)

    # Sort keys of the admin studies list.
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.create_index("ix_study_patient_id", ["patient_id"], unique=False)
        batch_op.create_index("ix_study_patient_name", ["patient_name"], unique=False)
        batch_op.create_index("ix_study_accession_number", ["accession_number"], unique=False)

    # The study timeline also collects events that name only a job (job.requeued).
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.create_index("ix_event_job_id", ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index("ix_event_job_id")

    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.drop_index("ix_study_accession_number")
        batch_op.drop_index("ix_study_patient_name")
        batch_op.drop_index("ix_study_patient_id")

    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_token_user_id"))

    op.drop_table("api_token")
