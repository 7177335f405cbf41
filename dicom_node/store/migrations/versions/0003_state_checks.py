"""state checks: series, job and delivery states limited to their enums

Revision ID: 0003
Revises: 0002

The states were free text, written by several modules; now each has one owner and an enum
(``dicom_node.store.states``), and the database refuses any other value. The values are
spelled out here (a migration is a snapshot: it must not change when the enums do). A row
with a value outside the list would make the upgrade fail, which is wanted: it would be
a state that no code knows how to move on.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATES = {
    "series": ("receiving", "complete", "routed", "unrouted", "ignored"),
    "job": ("queued", "running", "done", "failed"),
    "delivery": ("pending", "done", "failed"),
}


def upgrade() -> None:
    for table, values in STATES.items():
        # Batch mode: SQLite cannot add a constraint to a table, so the table is copied.
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_check_constraint(
                f"ck_{table}_state", "state IN ({})".format(", ".join(f"'{v}'" for v in values))
            )


def downgrade() -> None:
    for table in STATES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(f"ck_{table}_state", type_="check")
