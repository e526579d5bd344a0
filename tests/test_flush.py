"""The suite's table flush between transactional tests outlasts a deadlock with a live worker's transaction
(tests/conftest.py, flush_retried_on_deadlock): made here on PostgreSQL the way CI met it, a transaction that reads
one table the TRUNCATE holds and another it waits for."""

from __future__ import annotations

import re
import threading
import time

import pytest
from django.core.management.color import no_style
from django.core.management.sql import sql_flush
from django.db import connection, connections, transaction

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the deadlock is PostgreSQL's"),
]


def test_the_flush_waits_out_a_deadlock_with_a_workers_transaction() -> None:
    statements = sql_flush(no_style(), connection)
    tables = re.findall(r'"(\w+)"', statements[0])
    first, last = tables[0], tables[-1]  # the TRUNCATE locks them in this order
    worker_error: list[BaseException] = []
    holding = threading.Event()

    def worker() -> None:  # holds the last table, then asks for the first while the flush holds it
        try:
            with transaction.atomic(), connections["default"].cursor() as cursor:
                cursor.execute(f'SELECT 1 FROM "{last}" LIMIT 1')
                holding.set()
                time.sleep(0.3)  # the flush now holds the first table and waits for the last
                cursor.execute(f'SELECT 1 FROM "{first}" LIMIT 1')
        except BaseException as error:
            worker_error.append(error)
        finally:
            connections["default"].close()

    thread = threading.Thread(target=worker)
    thread.start()
    assert holding.wait(10)
    connection.ops.execute_sql_flush(statements)  # PostgreSQL ends the flush as the deadlock's victim, once
    thread.join(30)

    assert worker_error == []  # the worker's transaction went through
    with connection.cursor() as cursor:
        cursor.execute('SELECT count(*) FROM "auth_user"')
        assert cursor.fetchone() == (0,)  # and the flush, tried again, emptied the tables
