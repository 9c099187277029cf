<%!
import re

%>"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

# revision identifiers, used by Alembic.
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade(engine_name: str) -> None:
    """Upgrade database ``engine_name`` (a multidb database name)."""
    globals().get("upgrade_" + engine_name.replace("-", "_"), _nothing)()


def downgrade(engine_name: str) -> None:
    """Downgrade database ``engine_name`` (a multidb database name)."""
    globals().get("downgrade_" + engine_name.replace("-", "_"), _nothing)()


def _nothing() -> None:
    """A database this revision has no changes for."""
<%
    db_names = [n for n in re.split(r",\s*", config.get_main_option("databases", "")) if n]
%>
% for db_name in db_names:


def upgrade_${db_name.replace("-", "_")}() -> None:
    ${context.get("%s_upgrades" % db_name.replace("-", "_"), "pass")}


def downgrade_${db_name.replace("-", "_")}() -> None:
    ${context.get("%s_downgrades" % db_name.replace("-", "_"), "pass")}
% endfor
