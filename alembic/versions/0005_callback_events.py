"""intermediate callback events a task asked for

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL (every existing row) means "the terminal callback only", as before.
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(
            sa.Column(
                'callback_events', sa.JSON().with_variant(JSONB(), 'postgresql'), nullable=True
            )
        )


def downgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('callback_events')
