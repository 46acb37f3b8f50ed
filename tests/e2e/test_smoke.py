from polycoder_ls.config import Settings

SOURCE = (
    "import os\n\n\ndef read_file(path):\n    with open(path) as handle:\n        return handle.re"
)


async def test_inline_completion_matches_reference(editor, tiny_model, reference):
    await editor.start({"model": str(tiny_model)})
    editor.open("file:///work/a.py", SOURCE)
    items = await editor.inline("file:///work/a.py", 5, len("        return handle.re"))
    expected = reference.suggestion(SOURCE, len(SOURCE), Settings(model=str(tiny_model)))
    print(items, expected)
    assert expected is not None
    assert [item.insert_text for item in items] == [expected.text]
