"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 22:33:15.632760
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("refcount", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_blob")),
    )
    op.create_table(
        "job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("target", sa.String(length=300), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job")),
    )
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_status"), ["status"], unique=False)

    op.create_table(
        "namespace",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_namespace")),
        sa.UniqueConstraint("name", name=op.f("uq_namespace_name")),
    )
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("namespace_id", sa.Integer(), nullable=True),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["namespace_id"],
            ["namespace.id"],
            name=op.f("fk_api_token_namespace_id_namespace"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_token")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_token_token_hash")),
    )
    op.create_table(
        "model",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("namespace_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["namespace_id"], ["namespace.id"], name=op.f("fk_model_namespace_id_namespace")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model")),
        sa.UniqueConstraint("namespace_id", "name", name=op.f("uq_model_namespace_id")),
    )
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_namespace_id"), ["namespace_id"], unique=False)

    op.create_table(
        "text_set",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("blob", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["blob"], ["blob.sha256"], name=op.f("fk_text_set_blob_blob")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_text_set")),
        sa.UniqueConstraint("name", name=op.f("uq_text_set_name")),
    )
    op.create_table(
        "version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("parent_version_id", sa.Integer(), nullable=True),
        sa.Column("relation", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=True),
        sa.Column("logical_bytes", sa.BigInteger(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("lossy", sa.Boolean(), nullable=False),
        sa.Column("profiles", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_version_model_id_model"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["parent_version_id"],
            ["version.id"],
            name=op.f("fk_version_parent_version_id_version"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_version")),
        sa.UniqueConstraint("model_id", "revision", name=op.f("uq_version_model_id")),
    )
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_version_model_id"), ["model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_version_parent_version_id"), ["parent_version_id"], unique=False)

    op.create_table(
        "artifact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("profile", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("blob", sa.String(length=64), nullable=True),
        sa.Column("quality", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["blob"], ["blob.sha256"], name=op.f("fk_artifact_blob_blob")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_artifact_version_id_version"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifact")),
        sa.UniqueConstraint("version_id", "profile", name=op.f("uq_artifact_version_id")),
    )
    with op.batch_alter_table("artifact", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_artifact_version_id"), ["version_id"], unique=False)

    op.create_table(
        "file",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("uploaded", sa.Boolean(), nullable=False),
        sa.Column("source_file_id", sa.Integer(), nullable=True),
        sa.Column("staging_key", sa.String(length=200), nullable=True),
        sa.Column("header_blob", sa.String(length=64), nullable=True),
        sa.Column("blob", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["blob"], ["blob.sha256"], name=op.f("fk_file_blob_blob")),
        sa.ForeignKeyConstraint(["header_blob"], ["blob.sha256"], name=op.f("fk_file_header_blob_blob")),
        sa.ForeignKeyConstraint(
            ["source_file_id"], ["file.id"], name=op.f("fk_file_source_file_id_file"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_file_version_id_version"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_file")),
        sa.UniqueConstraint("version_id", "path", name=op.f("uq_file_version_id")),
    )
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_file_sha256"), ["sha256"], unique=False)
        batch_op.create_index(batch_op.f("ix_file_version_id"), ["version_id"], unique=False)

    op.create_table(
        "evaluation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("artifact_id", sa.Integer(), nullable=True),
        sa.Column("text_set_id", sa.Integer(), nullable=False),
        sa.Column("bits_per_byte", sa.Float(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["artifact_id"],
            ["artifact.id"],
            name=op.f("fk_evaluation_artifact_id_artifact"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["text_set_id"],
            ["text_set.id"],
            name=op.f("fk_evaluation_text_set_id_text_set"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_evaluation_version_id_version"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation")),
    )
    with op.batch_alter_table("evaluation", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evaluation_text_set_id"), ["text_set_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_evaluation_version_id"), ["version_id"], unique=False)

    op.create_table(
        "tensor",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("offset_begin", sa.BigInteger(), nullable=False),
        sa.Column("offset_end", sa.BigInteger(), nullable=False),
        sa.Column("encoding", sa.String(length=16), nullable=False),
        sa.Column("blob", sa.String(length=64), nullable=True),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("parent_tensor_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["blob"], ["blob.sha256"], name=op.f("fk_tensor_blob_blob")),
        sa.ForeignKeyConstraint(
            ["file_id"], ["file.id"], name=op.f("fk_tensor_file_id_file"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["parent_tensor_id"], ["tensor.id"], name=op.f("fk_tensor_parent_tensor_id_tensor")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_tensor_version_id_version"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tensor")),
        sa.UniqueConstraint("file_id", "name", name=op.f("uq_tensor_file_id")),
    )
    with op.batch_alter_table("tensor", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tensor_file_id"), ["file_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tensor_parent_tensor_id"), ["parent_tensor_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tensor_sha256"), ["sha256"], unique=False)
        batch_op.create_index(batch_op.f("ix_tensor_version_id"), ["version_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tensor", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tensor_version_id"))
        batch_op.drop_index(batch_op.f("ix_tensor_sha256"))
        batch_op.drop_index(batch_op.f("ix_tensor_parent_tensor_id"))
        batch_op.drop_index(batch_op.f("ix_tensor_file_id"))

    op.drop_table("tensor")
    with op.batch_alter_table("evaluation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluation_version_id"))
        batch_op.drop_index(batch_op.f("ix_evaluation_text_set_id"))

    op.drop_table("evaluation")
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_file_version_id"))
        batch_op.drop_index(batch_op.f("ix_file_sha256"))

    op.drop_table("file")
    with op.batch_alter_table("artifact", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_artifact_version_id"))

    op.drop_table("artifact")
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_version_parent_version_id"))
        batch_op.drop_index(batch_op.f("ix_version_model_id"))

    op.drop_table("version")
    op.drop_table("text_set")
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_namespace_id"))

    op.drop_table("model")
    op.drop_table("api_token")
    op.drop_table("namespace")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_status"))

    op.drop_table("job")
    op.drop_table("blob")
