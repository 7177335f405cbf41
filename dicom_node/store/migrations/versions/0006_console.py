"""operator's console: cancelled jobs, refused peers, destination status

Revision ID: 0006
Revises: 0005

* ``job.state`` may be ``cancelled`` (an operator cancelled a queued job on the admin
  page): the CHECK constraint of 0003 is replaced by one with the new value.
* ``refusal``: connections, associations and C-STOREs the receiver refused, with calling
  AE, address, status and reason (only log lines before); ``receive.refusals`` keeps the
  newest rows only.
* ``destination_status``: the last success and the last error of each destination, for
  the destinations page.

The values are spelled out (a migration is a snapshot: it must not change when the
enums do).
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JOB_STATES_0003 = ("queued", "running", "done", "failed")
JOB_STATES = (*JOB_STATES_0003, "cancelled")


def _check(values: tuple[str, ...]) -> str:
    return "state IN ({})".format(", ".join(f"'{v}'" for v in values))


def upgrade() -> None:
    # Batch mode: SQLite cannot change a constraint in place, so the table is copied.
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_constraint("ck_job_state", type_="check")
        batch_op.create_check_constraint("ck_job_state", _check(JOB_STATES))
    op.create_table(
        "refusal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("calling_ae", sa.String(length=64), nullable=False),
        sa.Column("called_ae", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("meaning", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "destination_status",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("last_success_at", sa.DateTime(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("destination_status")
    op.drop_table("refusal")
    # Cancelled jobs have no state in the older schema: they become failed, with the
    # reason kept in their error text.
    op.execute(
        "UPDATE job SET state = 'failed', error = 'cancelled by an operator' "
        "WHERE state = 'cancelled'"
    )
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_constraint("ck_job_state", type_="check")
        batch_op.create_check_constraint("ck_job_state", _check(JOB_STATES_0003))
