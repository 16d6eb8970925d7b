"""initial schema: studies, runs, checkpoints with decisions, model registry

Revision ID: 0001
Revises:
Create Date: 2026-11-28 00:04:11.525726
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "model_versions",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("architecture", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("artifact", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("version"),
    )
    op.create_table(
        "studies",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_id", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("reference_runs", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("study_id"),
    )
    op.create_table(
        "aliases",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(
            ["version"],
            ["model_versions.version"],
        ),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "runs",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("max_epochs", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=True),
        sa.Column("dataset", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_epoch", sa.Integer(), nullable=True),
        sa.Column("n_checkpoints", sa.Integer(), nullable=False),
        sa.Column("final_mqe", sa.Float(), nullable=True),
        sa.Column("final_topographic_error", sa.Float(), nullable=True),
        sa.Column("final_dead_neuron_ratio", sa.Float(), nullable=True),
        sa.Column("reference_seq", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["study_pk"], ["studies.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("run_id"),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_status_pk", ["status", "pk"], unique=False)
        batch_op.create_index("ix_runs_study_pk", ["study_pk", "pk"], unique=False)
        batch_op.create_index(
            "ix_runs_study_reference", ["study_pk", "reference_seq"], unique=False
        )

    op.create_table(
        "checkpoints",
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("mqe", sa.Float(), nullable=True),
        sa.Column("topographic_error", sa.Float(), nullable=True),
        sa.Column("dead_neuron_ratio", sa.Float(), nullable=True),
        sa.Column("wall_s", sa.Float(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("policy", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("predicted_mqe", sa.Float(), nullable=True),
        sa.Column("predicted_topographic_error", sa.Float(), nullable=True),
        sa.Column("predicted_dead_neuron_ratio", sa.Float(), nullable=True),
        sa.Column("predicted_score", sa.Float(), nullable=True),
        sa.Column("score_low", sa.Float(), nullable=True),
        sa.Column("score_high", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(["run_pk"], ["runs.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_pk", "epoch"),
    )


def downgrade() -> None:

    op.drop_table("checkpoints")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_study_reference")
        batch_op.drop_index("ix_runs_study_pk")
        batch_op.drop_index("ix_runs_status_pk")

    op.drop_table("runs")
    op.drop_table("aliases")
    op.drop_table("studies")
    op.drop_table("model_versions")
