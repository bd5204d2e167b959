"""what came of each callback try, and when the next is due

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RETRYING = sa.text("outcome = 'retrying'")


def upgrade() -> None:
    # NULL on the rows of earlier versions: their outcome was not recorded.
    with op.batch_alter_table('callback_attempts') as batch:
        batch.add_column(sa.Column('outcome', sa.String(16), nullable=True))
        batch.add_column(sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))
    # The sweep looks for deliveries whose next try is overdue: only tries waiting for another.
    op.create_index(
        'ix_callback_attempts_due',
        'callback_attempts',
        ['next_attempt_at'],
        postgresql_where=RETRYING,
        sqlite_where=RETRYING,
    )


def downgrade() -> None:
    op.drop_index('ix_callback_attempts_due', table_name='callback_attempts')
    with op.batch_alter_table('callback_attempts') as batch:
        batch.drop_column('next_attempt_at')
        batch.drop_column('outcome')
