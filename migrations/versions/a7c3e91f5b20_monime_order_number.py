"""Monime's order number on the order

orders.monime_order_number: the orderNumber Monime gives the payment that
completed the order (its receipts are keyed by it); null until one is known,
and for every order stored before this revision.

Revision ID: a7c3e91f5b20
Revises: ffbccea0e1ce
Create Date: 2026-11-30 05:10:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'a7c3e91f5b20'
down_revision = 'ffbccea0e1ce'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('monime_order_number', sa.String(length=64), nullable=True))


def downgrade():
    # SQLite drops the column in place (3.35+): copying the table would trip the
    # foreign key checkout_sessions holds on orders.
    with op.batch_alter_table('orders', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('monime_order_number')
