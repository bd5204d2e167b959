"""idempotency keys on tasks

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: plain ALTERs on Postgres, a table copy where SQLite needs one.
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('idempotency_key', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('request_hash', sa.String(length=64), nullable=True))
        batch.create_index(
            'ux_tasks_user_idempotency_key', ['user_id', 'idempotency_key'], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.drop_index('ux_tasks_user_idempotency_key')
        batch.drop_column('request_hash')
        batch.drop_column('idempotency_key')
