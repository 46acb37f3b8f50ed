import pytest

from polycoder_ls.documents import Cursor
from polycoder_ls.postprocess import Suggestion, postprocess, wants_multiline


def cursor(before: str, after: str = "", following: str = "") -> Cursor:
    return Cursor(prefix=before, line_suffix=after, following_text=following)


def run(raw: str, at: Cursor, mode: str = "auto", stops=()) -> Suggestion | None:
    return postprocess(raw, at, mode, stops)[0]


@pytest.mark.parametrize(
    ("before", "after", "mode", "expected"),
    [
        ("x = 1\n", "", "auto", True),
        ("def f():\n    ", "", "auto", True),
        ("def f():", "", "auto", True),
        ("if (a) {", "", "auto", True),
        ("x = foo", "", "auto", False),
        ("x = foo(", ")", "auto", False),
        ("x = foo", "", "always", True),
        ("", "", "never", False),
    ],
)
def test_multiline_decision(before, after, mode, expected):
    assert wants_multiline(cursor(before, after), mode) is expected


def test_single_line_stops_at_the_line_end():
    assert run("bar(1)\nnext()", cursor("x = foo")) == Suggestion("bar(1)")
    assert postprocess("bar(1)\n", cursor("x = foo"), "auto", ())[1] is True
    assert postprocess("bar(1", cursor("x = foo"), "auto", ())[1] is False


def test_trailing_whitespace_is_dropped():
    assert run("bar(1)   \n", cursor("x = foo")) == Suggestion("bar(1)")


def test_whitespace_only_is_not_a_suggestion():
    assert run("   \n  x", cursor("x = foo")) is None
    assert run("\n\n", cursor("def f():\n    "), "auto") is None


def test_block_ends_when_indentation_falls():
    at = cursor("def f(x):\n    ")
    raw = "y = x + 1\n    return y\ndef g():\n    pass\n"
    result, finished = postprocess(raw, at, "auto", ())
    assert result == Suggestion("y = x + 1\n    return y")
    assert finished


def test_block_after_an_opener_keeps_only_the_inner_block():
    at = cursor("def f(x):")
    raw = "\n    return x\nprint(f(1))\n"
    assert run(raw, at) == Suggestion("\n    return x")


def test_blank_line_gap_ends_a_block():
    at = cursor("class A:\n    ")
    assert run("a = 1\n\n    b = 2\n", at) == Suggestion("a = 1")


def test_brace_block_keeps_its_closing_line():
    at = cursor("int f(int x) {")
    raw = "\n  return x;\n}\nint g() {\n"
    assert run(raw, at) == Suggestion("\n  return x;\n}")


def test_unfinished_block_is_not_final():
    at = cursor("def f(x):\n    ")
    assert postprocess("y = 1\n    z = 2", at, "auto", ())[1] is False


def test_closers_after_the_cursor_are_replaced_when_the_suggestion_has_them():
    at = cursor("print(foo(", "))")
    assert run("1, 2))", at) == Suggestion("1, 2))", replaced_chars=2)


def test_closers_after_the_cursor_are_kept_when_the_suggestion_lacks_them():
    at = cursor("print(foo(", "))")
    assert run("1, 2", at) == Suggestion("1, 2", replaced_chars=0)


def test_no_suggestion_in_the_middle_of_code():
    assert run("bar", cursor("x = ", "foo(1)")) is None


def test_stop_strings_cut_the_text():
    result, finished = postprocess("a + b # done", cursor("x = "), "auto", ["#"])
    assert result == Suggestion("a + b")
    assert finished


def test_undecodable_bytes_end_the_suggestion():
    assert run("abc\ufffddef", cursor("x = ")) == Suggestion("abc")
    assert postprocess("abc\ufffd", cursor("x = "), "auto", ())[1] is False
    assert postprocess("abc\ufffdd", cursor("x = "), "auto", ())[1] is True


def test_windows_line_endings_in_the_output():
    at = cursor("def f():\n    ")
    assert run("a = 1\r\n    b = 2\r\nx = 0\r\n", at) == Suggestion("a = 1\n    b = 2")
