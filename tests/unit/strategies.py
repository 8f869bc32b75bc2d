"""Hypothesis strategies for any msgspec contract type, derived from msgspec.inspect: the values
respect the contract invariants (bounds, lengths and patterns of the field types)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from marketbus.contracts import invariants

_text = st.text(min_size=0, max_size=12)
_BIG = Decimal("1e15")
_DECIMALS = {  # by the invariant a decimal field carries (x-invariant in its schema)
    "positive": st.decimals(min_value=Decimal("0.000001"), max_value=_BIG, places=6),
    "non_negative": st.decimals(min_value=Decimal(0), max_value=_BIG, places=6).map(abs),
    "signed": st.decimals(min_value=-_BIG, max_value=_BIG, places=6),
}


def for_type(tp: Any) -> st.SearchStrategy[Any]:
    return _for_info(mi.type_info(tp))


def _for_info(info: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(info, mi.Metadata):
        extra = info.extra_json_schema or {}
        if "pattern" in extra and isinstance(info.type, mi.StrType):
            longest = min(info.type.max_length or 12, 12)
            return st.from_regex(extra["pattern"].replace("]+", f"]{{1,{longest}}}"), fullmatch=True)
        if "x-invariant" in extra:
            if isinstance(info.type, mi.StrType):  # a decimal carried as text (MarketPrice): its canonical text
                return _DECIMALS[extra["x-invariant"]].map(invariants.decimal_text)
            return _DECIMALS[extra["x-invariant"]]
        return _for_info(info.type)
    if isinstance(info, mi.StrType):
        return st.text(min_size=info.min_length or 0, max_size=min(info.max_length or 12, 12))
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.IntType):
        low = info.ge if info.ge is not None else -(2**62)
        high = info.le if info.le is not None else 2**62
        return st.integers(low, high)
    if isinstance(info, mi.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(info, mi.DecimalType):
        return _DECIMALS["signed"]
    if isinstance(info, mi.BytesType):
        return st.binary(max_size=16)
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, mi.RawType):
        return st.just(msgspec.Raw(b'{"a":1}'))
    if isinstance(info, mi.ListType):
        return st.lists(_for_info(info.item_type), max_size=3)
    if isinstance(info, mi.DictType):
        return st.dictionaries(_for_info(info.key_type), _for_info(info.value_type), max_size=2)
    if isinstance(info, mi.UnionType):
        return st.one_of([_for_info(t) for t in info.types])
    if isinstance(info, mi.StructType):
        fields = {f.name: _for_info(f.type) for f in info.fields}
        return st.fixed_dictionaries(fields).map(lambda kw: info.cls(**kw))
    raise NotImplementedError(f"no strategy for {info!r}")


__all__ = ["Decimal", "for_type"]
