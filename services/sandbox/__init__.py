"""Faithful local simulators of the four vendor APIs (FinX, TickSupply, Digitex, Sitagri)."""
