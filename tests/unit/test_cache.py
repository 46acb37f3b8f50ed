import time

from polycoder_ls.cache import CompletionCache
from polycoder_ls.documents import Cursor
from polycoder_ls.postprocess import Suggestion

URI = "file:///a.py"


def at(prefix: str, suffix: str = "", following: str = "") -> Cursor:
    return Cursor(prefix=prefix, line_suffix=suffix, following_text=following)


def test_identical_request_hits():
    cache = CompletionCache(8, 60)
    cache.store(URI, at("x = foo"), Suggestion("(1)"))
    assert cache.lookup(URI, at("x = foo")) == (True, Suggestion("(1)"))
    assert cache.lookup(URI, at("x = foo", ")")) == (False, None)
    assert cache.lookup(URI, at("x = foo", "", "\nmore")) == (False, None)


def test_no_suggestion_is_cached_too():
    cache = CompletionCache(8, 60)
    cache.store(URI, at("x = "), None)
    assert cache.lookup(URI, at("x = ")) == (True, None)


def test_type_through_answers_the_rest():
    cache = CompletionCache(8, 60)
    cache.store(URI, at("x = foo", ")"), Suggestion("(a, b", replaced_chars=1))
    assert cache.lookup(URI, at("x = foo(a", ")")) == (True, Suggestion(", b", 1))
    assert cache.lookup(URI, at("x = foo(a, b", ")")) == (False, None)
    assert cache.lookup(URI, at("x = foo(z", ")")) == (False, None)
    assert cache.lookup(URI, at("y = foo(a", ")")) == (False, None)
    assert cache.lookup("file:///other.py", at("x = foo(a", ")")) == (False, None)


def test_entries_expire_and_are_bounded():
    cache = CompletionCache(2, 0.05)
    for n in range(3):
        cache.store(URI, at(f"x{n}"), Suggestion("y"))
    assert cache.lookup(URI, at("x0")) == (False, None)
    assert cache.lookup(URI, at("x2"))[0]
    time.sleep(0.1)
    assert cache.lookup(URI, at("x2")) == (False, None)


def test_size_zero_disables_the_cache():
    cache = CompletionCache(0, 60)
    cache.store(URI, at("x"), Suggestion("y"))
    assert cache.lookup(URI, at("x")) == (False, None)


def test_forget_document_stops_type_through():
    cache = CompletionCache(8, 60)
    cache.store(URI, at("x = "), Suggestion("value"))
    cache.forget_document(URI)
    assert cache.lookup(URI, at("x = va")) == (False, None)


def test_the_same_text_in_another_language_is_a_miss():
    from polycoder_ls.languages import language_named

    python, javascript = language_named("Python"), language_named("JavaScript")
    assert python is not None and javascript is not None
    cache = CompletionCache(8, 60)
    cache.store(URI, Cursor("x = f(", "", "", python), Suggestion("1)"))
    assert cache.lookup(URI, Cursor("x = f(", "", "", javascript)) == (False, None)
    assert cache.lookup(URI, Cursor("x = f(", "", "", python)) == (True, Suggestion("1)"))
