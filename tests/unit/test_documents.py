import pytest

from polycoder_ls.documents import UTF8, UTF16, UTF32, Document, cursor_at

TEXT = "a = 'é😀x'\r\nsecond\fline\rthird\n"


def doc(text: str = TEXT) -> Document:
    return Document("file:///t.py", "python", 1, text)


@pytest.mark.parametrize(
    ("encoding", "column", "char"),
    [(UTF16, 8, "x"), (UTF8, 11, "x"), (UTF32, 7, "x"), (UTF16, 5, "é"), (UTF8, 5, "é")],
)
def test_columns_follow_the_negotiated_encoding(encoding, column, char):
    document = doc()
    assert document.text[document.offset_at(0, column, encoding)] == char


def test_only_lsp_line_breaks_count():
    document = doc()
    # \f is not a line break in LSP; \r\n and a lone \r are.
    assert document.text[document.offset_at(1, 7, UTF16)] == "l"
    assert document.text[document.offset_at(2, 0, UTF16)] == "t"
    assert document.offset_at(3, 0, UTF16) == len(TEXT)


def test_positions_out_of_range_are_clamped():
    document = doc()
    assert document.offset_at(0, 999, UTF16) == TEXT.index("\r\n")
    assert document.offset_at(99, 0, UTF16) == len(TEXT)
    assert document.offset_at(-1, 0, UTF16) == 0


def test_column_inside_a_surrogate_pair_lands_on_the_character():
    document = doc()
    assert document.text[document.offset_at(0, 6, UTF16)] == "😀"


@pytest.mark.parametrize("encoding", [UTF8, UTF16, UTF32])
def test_position_at_inverts_offset_at(encoding):
    document = doc()
    for offset in range(len(TEXT) + 1):
        if TEXT[offset - 1 : offset + 1] == "\r\n":
            continue
        line, column = document.position_at(offset, encoding)
        assert document.offset_at(line, column, encoding) == offset


def test_replace_updates_lines():
    document = doc("one\ntwo\n")
    document.replace(4, 7, "2\n2b")
    assert document.text == "one\n2\n2b\n"
    assert document.offset_at(2, 1, UTF16) == document.text.index("b")


def test_cursor_splits_the_line():
    document = doc("def f(x):\n    return g(x)\nnext\n")
    cursor = cursor_at(document, document.offset_at(1, 13, UTF16))
    assert cursor.line_prefix == "    return g("
    assert cursor.line_suffix == "x)"
    assert cursor.following_text == "\nnext\n"
