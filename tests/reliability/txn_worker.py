"""A client process whose transactions the test commits, or ends by SIGKILL.

Usage: ``python txn_worker.py URL PREFIX``. It connects and prints ``ready``, then waits for
``go``. From then on it loops: open a transaction, take the next ID of PREFIX in it (the
caller's-transaction mode: the row stays locked), insert an order row carrying the ID, print
``holding <ID>``, and wait for a command: ``commit`` (commit, print ``committed <ID>``, loop),
``rollback`` (roll back, loop) or ``quit`` (roll back and exit). The test answers each
``holding`` line, or kills the process instead, so a kill always lands mid-transaction.
"""

from __future__ import annotations

import os
import sys

import sqlalchemy as sa
from sqlalchemy.orm import Session

import idmanager

ORDERS = sa.Table(
    "reliability_orders",
    sa.MetaData(),
    sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
    # Not unique on purpose: a duplicate ID must be countable, not refused.
    sa.Column("business_id", sa.String(64), nullable=False, index=True),
    sa.Column("worker", sa.Integer, nullable=False),
)


def main() -> None:
    url, prefix = sys.argv[1], sys.argv[2]
    engine = idmanager.create_engine(url)
    with engine.connect():
        pass  # import and connect before the test counts on us
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    while True:
        with Session(engine) as session:
            issued = idmanager.IdGeneratorUtil.generate_id(prefix, session)
            session.execute(ORDERS.insert().values(business_id=issued, worker=os.getpid()))
            print(f"holding {issued}", flush=True)
            command = sys.stdin.readline().strip()
            if command == "commit":
                session.commit()
                print(f"committed {issued}", flush=True)
            else:
                session.rollback()
                if command != "rollback":
                    return


if __name__ == "__main__":
    main()
