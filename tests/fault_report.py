"""What `pytest -m faults` prints at the end (issue 7): one line per injected fault with
survived/failed, and how many hostile inputs the property-based tests tried.

Fault tests call `record_fault(name, survived, detail)`; hostile-input tests call
`count_hostile(target)` once per generated input. tests/conftest.py prints the table in
pytest's terminal summary.
"""

from collections import Counter

FAULTS: list[tuple[str, bool, str]] = []
HOSTILE: Counter = Counter()


def record_fault(name: str, survived: bool, detail: str = "") -> None:
    FAULTS.append((name, bool(survived), detail))


def count_hostile(target: str, n: int = 1) -> None:
    HOSTILE[target] += n
