"""The one dot-path reader of TickSupply custom columns (``json.path``, ``unfold``), shared by the
TickSupply sandbox (native JSON messages) and the export orchestrator (history messages, where
nested values may be JSON text)."""

from __future__ import annotations

from marketbus.runtime.tsapi_schemas import dot_path, unfolded


def test_dot_path_reads_dicts_and_list_indexes() -> None:
    message = {"a": {"b": [10, {"c": "x"}]}}
    assert dot_path(message, "a.b.0") == 10
    assert dot_path(message, "a.b.1.c") == "x"
    assert dot_path(message, "a.b.2") is None and dot_path(message, "a.z.c") is None


def test_json_text_is_read_only_when_asked() -> None:
    message = {"levels": '[["1.5", "2"]]', "raw": "{not json"}
    assert dot_path(message, "levels.0.1") is None  # the sandbox's native messages: text is text
    assert dot_path(message, "levels.0.1", json_text=True) == "2"
    assert dot_path(message, "levels", json_text=True) == [["1.5", "2"]]
    assert dot_path(message, "raw", json_text=True) == "{not json"


def test_unfold_puts_each_element_in_the_arrays_place() -> None:
    message = {"t": 1, "data": {"fills": [{"p": 1}, {"p": 2}]}}
    rows = unfolded(message, "data.fills")
    assert rows == [{"t": 1, "data": {"fills": {"p": 1}}}, {"t": 1, "data": {"fills": {"p": 2}}}]
    assert message["data"]["fills"] == [{"p": 1}, {"p": 2}]  # the original is left alone
    assert unfolded(message, "data.none") == [message] and unfolded(message, None) == [message]
