"""Members: the federation's participants and their certificates, changed while it runs.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("compute", sa.String(64), nullable=True),
        sa.Column("added_at", sa.Float(), nullable=False),
        sa.Column("added_by", sa.String(64), nullable=False),
        sa.Column("removed_at", sa.Float(), nullable=True),
        sa.Column("removed_by", sa.String(64), nullable=True),
    )
    op.create_table(
        "certificates",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("member", sa.String(64), sa.ForeignKey("members.name"), nullable=False),
        sa.Column("not_after", sa.Float(), nullable=True),
        sa.Column("added_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.Column("revoked_by", sa.String(64), nullable=True),
    )
    op.create_index("ix_certificates_member", "certificates", ["member"])
