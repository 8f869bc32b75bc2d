"""Unit conversion as documented by Sitagri (factor = base units per unit, plus an offset).

``to_qty = ((qty * factor_from + offset_from) - offset_to) / factor_to``; e.g. 1 bushel of
wheat (USWSBS, factor 27.2155, the base unit being the kg) is 27.2155 / 1000 = 0.0272155 t.
"""

from __future__ import annotations

from decimal import Decimal

from .reference import Unit


def convert(quantity: Decimal | int | str, from_unit: Unit, to_unit: Unit) -> Decimal:
    if from_unit.unit_type and to_unit.unit_type and from_unit.unit_type != to_unit.unit_type:
        raise ValueError(
            f"cannot convert {from_unit.code} ({from_unit.unit_type}) to {to_unit.code} ({to_unit.unit_type})"
        )
    base = Decimal(quantity) * from_unit.factor + from_unit.offset
    return (base - to_unit.offset) / to_unit.factor
