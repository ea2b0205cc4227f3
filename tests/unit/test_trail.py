"""The engine's trail of live steps: sealed into plain data the collector stops tracking, a
parked run resumed and sealed again, the oldest sessions dropped, nothing of a traceback kept."""

from __future__ import annotations

import gc

from accompanist.engine.trail import LIVE, SEALED, Raised, Trails, raised
from accompanist.errors import TransactionFailedError
from accompanist.language.steps import Step, StepKind

SEND = Step(0, StepKind.SEND, "b", "a", "b", 1)
RECV = Step(1, StepKind.RECV, "b", "b", "a", 1)
LOCAL = Step(2, StepKind.LOCAL, "price_of")


class Park(Exception):  # noqa: N818 - named as the engine's signal is
    pass


def test_a_sealed_trail_is_plain_data_the_collector_stops_tracking() -> None:
    book = Trails(10)
    trail = book.attach("s")
    trail.extend((SEND, 1.0, 1.1, {"order": 7}, 0))
    trail.extend((LOCAL, 1.2, 1.3, 30, 0))
    view = book.get("s")
    assert view is not None and [len(s) for s in view.steps] == [LIVE, LIVE]
    assert [s[9] for s in view.sealed(repr)] == ["{'order': 7}", "30"]  # live values summed up
    book.seal("s")
    sealed = book.get("s")
    assert sealed is not None and [len(s) for s in sealed.steps] == [SEALED, SEALED]
    assert [(s[0], s[1], s[9], s[10]) for s in sealed.steps] == [(0, "send", "<dict>", True), (2, "local", 30, False)]
    gc.collect()
    gc.collect()
    assert not gc.is_tracked(book._by_session["s"])


def test_a_parked_run_resumes_its_trail_and_is_sealed_again() -> None:
    book = Trails(10)
    first = book.attach("s")
    first.extend((RECV, 1.0, 2.0, raised(Park("waiting for envelope #1 from 'a'")), 0))
    book.seal("s")
    again = book.attach("s")  # the session resumed by replay: the receive runs live again
    again.extend((RECV, 5.0, 5.5, "hello", 0))
    book.note_undone("s", ("reserve", "s/b/reserve/0", 0, 6.0, 6.1, 2))
    book.seal("s")
    view = book.get("s")
    assert view is not None
    assert [(s[0], s[12], s[13], s[9]) for s in view.steps] == [
        (1, "parked", "waiting for envelope #1 from 'a'", None),
        (1, None, "", "hello"),
    ]
    assert view.undone == (("reserve", "s/b/reserve/0", 0, 6.0, 6.1, 2),)


def test_the_oldest_sessions_go_first() -> None:
    book = Trails(2)
    for sid in ("s1", "s2", "s3"):
        book.attach(sid).extend((LOCAL, 0.0, 1.0, 1, 0))
        book.note_undone(sid, ("tx", f"{sid}/k", 2, 0.0, 1.0, 1))
    assert (book.get("s1"), len(book)) == (None, 2)
    assert book.get("s3") is not None and book.get("s3").undone  # type: ignore[union-attr]


def test_what_went_wrong_is_kept_without_the_exception() -> None:
    failed = raised(TransactionFailedError("c", "charge", 1, "Abort: refuses 5"))
    assert isinstance(failed, Raised) and (failed.how, failed.why) == ("failed", "Abort: refuses 5")
    assert (raised(ValueError("bad")).how, raised(ValueError("bad")).why) == ("failed", "ValueError: bad")
