"""What `pytest -m faults` prints at the end (issue 7): one line per injected fault with
survived/failed, and how many hostile inputs the property-based tests tried.

Fault tests call `record_fault(name, survived, detail)`; hostile-input tests call
`count_hostile(target)` once per generated input. tests/conftest.py prints the table in
pytest's terminal summary.
"""

import contextlib
from collections import Counter

FAULTS: list[tuple[str, bool, str]] = []
HOSTILE: Counter = Counter()


def record_fault(name: str, survived: bool, detail: str = "") -> None:
    FAULTS.append((name, bool(survived), detail))


def count_hostile(target: str, n: int = 1) -> None:
    HOSTILE[target] += n


@contextlib.contextmanager
def fault_case(name: str):
    """Record the fault as survived when the block passes, as failed (with the reason) when not.
    The block may set case["detail"] to say what was observed."""
    case = {"detail": ""}
    try:
        yield case
    except BaseException as err:
        record_fault(name, False, f"{type(err).__name__}: {str(err).strip()[:300]}")
        raise
    record_fault(name, True, case["detail"])
