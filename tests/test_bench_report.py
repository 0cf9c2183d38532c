"""The benchmark report's comparison with the best peer, on made-up records (nothing is run)."""

from ferroloop.bench import report, stats

LOOPS = ["asyncio", "uvloop", "rloop", "ferroloop"]


def _records(case, values, unit="ops/s", lower=False, cpu=None, family="micro"):
    """One repetition per value list entry: values[loop] = [rep0, rep1, ...]."""
    out = []
    for loop, per_rep in values.items():
        for rep, value in enumerate(per_rep):
            record = {"family": family, "case": case, "loop": loop, "rep": rep, "unit": unit}
            if value is None:
                record["error"] = "OSError: [Errno 9] Bad file descriptor"
            else:
                record["value"] = value
                if lower:
                    record["lower_is_better"] = True
                if cpu:
                    record["cpu_us"] = cpu[loop][rep]
            out.append(record)
    return out


def _rows(records):
    return stats.summarize(records, LOOPS, "asyncio", "ferroloop")


def test_the_best_peer_is_the_one_ferroloop_fares_worst_against_metric_by_metric():
    records = _records(
        "echo",
        {"asyncio": [100, 100], "uvloop": [150, 150], "rloop": [200, 220], "ferroloop": [180, 176]},
        cpu={
            "asyncio": [10, 10],
            "uvloop": [5, 5],
            "rloop": [8, 8],
            "ferroloop": [6, 6],
        },
    )
    (row,) = _rows(records)
    assert row["versus"]["value"]["peer"] == "rloop"
    assert row["versus"]["value"]["median"] == (180 / 200 + 176 / 220) / 2
    assert row["versus"]["cpu_us"]["peer"] == "uvloop"
    assert row["versus"]["cpu_us"]["median"] == 5 / 6


def test_a_peer_that_failed_a_row_is_not_its_best_peer():
    records = _records(
        "proto",
        {"asyncio": [100], "uvloop": [120], "rloop": [None], "ferroloop": [130]},
    )
    (row,) = _rows(records)
    assert row["versus"]["value"]["peer"] == "uvloop"
    assert report.behind([row], "ferroloop", 1) == []


def test_rows_behind_the_best_peer_are_listed_as_measured():
    records = _records(
        "chained",
        {"asyncio": [100], "uvloop": [300], "rloop": [900], "ferroloop": [600]},
    ) + _records(
        "chained (instr/op)",
        {"asyncio": [16000], "uvloop": [4000], "rloop": [2000], "ferroloop": [2500]},
        unit="instr/op",
        lower=True,
        family="callgrind",
    )
    lines = report.behind(_rows(records), "ferroloop", 1)
    assert lines == [
        "- micro / chained: ferroloop throughput 0.67x of rloop's",
        "- callgrind / chained (instr/op): ferroloop instr/op 1.25x of rloop's",
    ]


def test_the_table_names_the_best_peer_in_its_column():
    records = _records(
        "batch",
        {"asyncio": [100], "uvloop": [200], "rloop": [400], "ferroloop": [500]},
    )
    header, lines = report.family_table(_rows(records), LOOPS, "asyncio", "ferroloop", 1)
    assert header[-1] == "ferroloop/best peer"
    assert lines[0][-1] == "1.25x rloop"
