"""The hostile-input suite's tally (tests/test_hostile*.py), which tests/conftest.py prints at
the end of the run: probes tried (hypothesis examples count one each), tracebacks a user
would have seen, silent wrong results (a hostile input that exited 0)."""

TALLY = {"tried": 0, "tracebacks": 0, "silent": 0}


def tally_line() -> str:
    return (
        f"hostile inputs: {TALLY['tried']} probes tried, tracebacks {TALLY['tracebacks']}, "
        f"silent wrong results {TALLY['silent']}"
    )
