"""The large indexes of an OA's state: expiry by buckets, what a checkpoint must write, and
the read-only views the API's copies use."""

from __future__ import annotations

import pytest

from service.domain.index import Index


class Seen:
    """A value changed in place, like a recipient seen again."""

    def __init__(self, day: int) -> None:
        self.day = day


def counting_index(days: dict[str, int]) -> tuple[Index[Seen], list[str]]:
    visited: list[str] = []
    values = {key: Seen(day) for key, day in days.items()}

    def expiry(value: Seen) -> int:
        visited.extend(k for k, v in values.items() if v is value)
        return value.day

    index = Index(expiry, values)
    visited.clear()
    return index, visited


def test_expiry_visits_only_the_buckets_that_expired() -> None:
    days = {f"k{i}": 10 + i % 5 for i in range(50)}
    index, visited = counting_index(days)
    index.expire_before(12)
    assert sorted(visited) == sorted(k for k, day in days.items() if day < 12)
    assert sorted(index) == sorted(k for k, day in days.items() if day >= 12)
    visited.clear()
    index.expire_before(12)
    assert visited == []


def test_a_value_whose_expiry_moved_forward_in_place_is_kept_then_expires_by_its_new_day() -> None:
    index, _ = counting_index({"a": 3, "b": 3})
    index.peek("a").day = 9  # type: ignore[union-attr]
    index.expire_before(5)
    assert list(index) == ["a"]
    index.expire_before(9)
    assert list(index) == ["a"]
    index.expire_before(10)
    assert list(index) == []


def test_an_entry_kept_past_its_expiry_is_looked_at_again_by_the_next_expiry() -> None:
    index: Index[int] = Index(lambda t: t // 10, {"old": 5, "held": 17, "new": 25}, time=int)
    index.expire_before(2, keep_from=17)
    assert sorted(index) == ["held", "new"]
    index.expire_before(2, keep_from=18)
    assert sorted(index) == ["new"]


def test_a_key_deleted_and_set_again_expires_by_its_new_value() -> None:
    index: Index[int] = Index(lambda day: day, {"k": 1})
    del index["k"]
    index["k"] = 7
    index.expire_before(5)
    assert index.peek("k") == 7
    index.expire_before(8)
    assert "k" not in index


def test_touched_holds_what_was_changed_or_handed_out_for_change_and_peek_does_not_mark() -> None:
    index: Index[Seen] = Index(lambda v: v.day, {"a": Seen(1), "b": Seen(1), "c": Seen(1)})
    assert index.touched == set(), "restored from a snapshot: nothing to write yet"
    assert index.peek("a") is not None
    assert "a" in index
    assert len(index) == 3
    assert dict(index.items()) == index.entries()
    assert index == index.entries()
    assert index.touched == set()
    index.get("a")
    index["d"] = Seen(2)
    del index["b"]
    assert index.touched == {"a", "b", "d"}
    index.clear_touched()
    index.expire_before(5)
    assert len(index) == 0
    assert index.touched == set(), "a store expires by its own key ranges"


def test_a_shared_view_never_changes_the_live_index_and_reads_what_it_expired_as_absent() -> None:
    live: Index[int] = Index(lambda day: day, {"a": 1, "b": 5})
    live.clear_touched()
    view = live.shared()
    with pytest.raises(TypeError):
        view["c"] = 9
    with pytest.raises(TypeError):
        del view["a"]
    view.expire_before(3)
    assert (view.peek("a"), "a" in view, view.get("a"), len(view), list(view)) == (
        None,
        False,
        None,
        1,
        ["b"],
    )
    assert view.entries() == {"b": 5}
    assert live.entries() == {"a": 1, "b": 5}
    assert live.touched == set()
    view.expire_before(6)
    assert len(view) == 0
    assert len(live) == 2
    live["c"] = 9
    assert view.peek("c") == 9, "a view shares the live entries"


def test_a_layered_view_reads_through_and_keeps_its_changes_to_itself() -> None:
    live = Index(lambda v: v.day, {"a": Seen(10), "b": Seen(11)})
    live.source = lambda key: Seen(12) if key == "c" else None  # what the store holds
    view = live.layered()

    view["a"].day = 20  # changed in place, as a fold changes a recipient
    view["d"] = Seen(13)
    del view["b"]

    assert view["a"].day == 20
    assert view.peek("c") is not None
    assert "d" in view
    assert "b" not in view
    live_a = live.peek("a")
    assert live_a is not None
    assert live_a.day == 10
    assert "d" not in live
    assert "b" in live
    assert live.touched == set()
    view.expire_before(15)  # a day change in the view hides there what it expired
    assert "c" not in view
    assert "c" in live


def test_a_key_offered_as_absent_reads_as_absent_without_asking_the_source_until_released() -> None:
    asked: list[str] = []

    def source(key: str) -> Seen | None:
        asked.append(key)
        return None

    index: Index[Seen] = Index(lambda v: v.day)
    index.source = source
    index.offer("new", None, index.releases)
    assert index.peek("new") is None
    assert asked == []
    index["new"] = Seen(3)  # set later: it reads as set
    assert index.peek("new") is not None
    assert index.take_changes().keys() == {"new"}
    index.offer("other", None, index.releases)
    index.release()
    assert index.peek("other") is None
    assert asked == ["other"]  # asked again once released
    index.offer("stale", None, index.releases - 1)  # read before a release: not taken
    assert index.peek("stale") is None
    assert asked == ["other", "stale"]
