"""Hypothesis strategies for any msgspec contract type, derived from msgspec.inspect."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

_text = st.text(min_size=0, max_size=12)
_decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(lambda d: d.is_finite())


def for_type(tp: Any) -> st.SearchStrategy[Any]:
    return _for_info(mi.type_info(tp))


def _for_info(info: mi.Type) -> st.SearchStrategy[Any]:  # noqa: PLR0911 - one branch per kind
    if isinstance(info, mi.StrType):
        return _text
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.IntType):
        return st.integers(-(2**62), 2**62)
    if isinstance(info, mi.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(info, mi.DecimalType):
        return _decimals
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
