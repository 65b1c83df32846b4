"""The kept 1e9 data set's reader, with every SQL statement Queries sends recorded (shared by the scripts here)."""
import sys

import clickhouse_connect

sys.path.insert(0, ".")  # run from the checkout
from trainmon.dashboard.queries import Queries  # noqa: E402

PROJECT = "proj-big"


def connect_capturing(username="reader"):
    """(client, Queries, captured [(sql, params)], the overlay's runs)."""
    client = clickhouse_connect.get_client(host="127.0.0.1", port=24123, database="trainmon_bench", username=username)
    captured = []
    frame = Queries._frame

    def spy(self, sql, qq=None, *a, **k):
        captured.append((sql, dict(qq.params) if qq is not None else {}))
        return frame(self, sql, qq, *a, **k)

    Queries._frame = spy
    runs = [r for (r,) in client.query("SELECT DISTINCT run FROM runs WHERE project = {p:String} ORDER BY run",
                                       parameters={"p": PROJECT}).result_rows]
    return client, Queries(client), captured, runs
