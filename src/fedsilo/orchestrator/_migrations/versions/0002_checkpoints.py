"""Checkpoints: a running job's state at its last closed round, to resume it after a restart.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("global_digest", sa.String(64), nullable=False),
        sa.Column("state_digest", sa.String(64), nullable=True),
        sa.Column("state_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
