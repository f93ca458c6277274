"""order feed indexes and order resolutions

ix_orders_updated_at_id / ix_orders_status_updated_at_id: the order feed
(GET /api/orders) pages by (updated_at, id), with or without a status.
order_resolutions: every resolution of an order held for review, by whom,
when, why and from what.

Revision ID: b7d41c9e2a10
Revises: 3b1f0c2a9d47
Create Date: 2026-11-30 05:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b7d41c9e2a10'
down_revision = '3b1f0c2a9d47'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('order_resolutions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.String(length=100), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('by', sa.String(length=100), nullable=False),
    sa.Column('via', sa.String(length=16), nullable=False),
    sa.Column('note', sa.String(length=500), nullable=False),
    sa.Column('previous_status', sa.String(length=16), nullable=False),
    sa.Column('previous_review_reason', sa.String(length=255), nullable=False),
    sa.Column('previous_review_event_id', sa.String(length=255), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("action IN ('complete', 'dismiss')", name='action_known'),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('order_resolutions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_order_resolutions_order_id'), ['order_id'], unique=False)

    # Plain CREATE INDEX, no table copy: SQLite builds an index in place.
    op.create_index('ix_orders_updated_at_id', 'orders', ['updated_at', 'id'], unique=False)
    op.create_index('ix_orders_status_updated_at_id', 'orders', ['status', 'updated_at', 'id'], unique=False)


def downgrade():
    op.drop_index('ix_orders_status_updated_at_id', table_name='orders')
    op.drop_index('ix_orders_updated_at_id', table_name='orders')
    with op.batch_alter_table('order_resolutions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_order_resolutions_order_id'))

    op.drop_table('order_resolutions')
