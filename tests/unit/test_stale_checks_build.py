"""A compiled contract-check module older than its source (a `git pull` without `make venv`)
must not stop marketbus from importing: the Python checks run instead, with a warning."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_an_older_build_of_the_checks_falls_back_to_the_python_checks() -> None:
    script = textwrap.dedent("""
        import sys, types, warnings
        import marketbus.contracts._checks as real
        stale = types.ModuleType("marketbus.contracts._checks")
        for name in dir(real):  # everything but what a newer source calls
            if name not in ("decimal_of_text", "event_id_hex"):
                setattr(stale, name, getattr(real, name))
        sys.modules["marketbus.contracts._checks"] = stale
        for name in [m for m in sys.modules if m.startswith("marketbus") and m != stale.__name__]:
            del sys.modules[name]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from decimal import Decimal
            from marketbus.contracts import invariants
            from marketbus.contracts.ids import event_id, event_id_of, id_head
            from marketbus.contracts.market import Trade
        assert any("older build" in str(w.message) for w in caught), [str(w.message) for w in caught]
        assert not invariants.compiled_checks()
        assert event_id_of(id_head("finx", "trade", "X"), "1") == event_id("finx", "trade", "X", "1")
        try:
            Trade(source="finx", venue="X", symbol="A", ts_event=1, ts_recv=1, event_id="e1",
                  price=Decimal("-1"), size=Decimal("1"))
        except Exception as exc:
            print("refused:", type(exc).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout
