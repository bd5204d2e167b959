"""indexes of the sweep: the tasks still queued or running, and tasks by end time

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 16:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    # The sweep reads the active tasks every minute, oldest first: without this it would scan
    # every task ever recorded. Partial, so it holds only the few tasks under way.
    op.create_index(
        'ix_tasks_active_created',
        'tasks',
        ['created_at'],
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    # Ended tasks whose client was not told are looked for in a window of end times.
    op.create_index('ix_tasks_finished', 'tasks', ['finished_at'])


def downgrade() -> None:
    op.drop_index('ix_tasks_finished', table_name='tasks')
    op.drop_index('ix_tasks_active_created', table_name='tasks')
