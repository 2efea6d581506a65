"""Properties of the fold over random streams: repeats change nothing, counts are recounts."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.admission import AdmissionRequest, decide
from service.domain.fold import advance, fold, read_item
from service.domain.records import recipient_hash
from service.domain.rules import ZBS_2026, Thresholds
from service.domain.state import OAState, Policy
from tests import feed
from tests.feed import Raw
from tests.zalo import OA_ID

VN = ZoneInfo("Asia/Ho_Chi_Minh")
START = datetime(2026, 5, 4, 8, 0, tzinfo=VN)
POLICY = Policy(ZBS_2026, Thresholds(), VN, {"t1": frozenset({"Ngừng nhận"})})

MSG_IDS = [f"m{i}" for i in range(12)]


@st.composite
def records(draw: st.DrawFn) -> Raw:
    minute = draw(st.integers(0, 36 * 60))
    moment = START + timedelta(minutes=minute)
    msg_id = draw(st.sampled_from(MSG_IDS))
    kind = draw(st.sampled_from(["receipt", "rating", "reply", "send", "admission", "sync"]))
    if kind == "receipt":
        return feed.receipt(msg_id, moment)
    if kind == "rating":
        return feed.rating(msg_id, draw(st.integers(1, 5)), moment)
    if kind == "reply":
        return feed.quick_reply(msg_id, draw(st.sampled_from(["Ngừng nhận", "OK"])), moment)
    if kind == "send":
        error = draw(st.sampled_from([0, 0, 0, -141, -144, -124]))
        return feed.send(
            draw(st.sampled_from(["t1", "t2"])),
            f"tr-{msg_id}-{error}",
            moment,
            error=error,
            msg_id=msg_id if error == 0 else None,
            tag=draw(st.sampled_from([1, 2, 3])),
            admission_id=draw(st.sampled_from([None, "a0", "a1"])),
        )
    if kind == "admission":
        number = draw(st.integers(0, 1))
        return feed.admission(f"a{number}", "t1", 2, draw(st.integers(0, 5)), moment)
    return feed.sync(moment, remaining_quota=draw(st.integers(0, 20_000)))


def run(raws: list[Raw]) -> OAState:
    state = OAState.new(OA_ID, ZBS_2026)
    clock = START
    for raw in raws:
        item = read_item(raw.kind, raw.key, raw.value, raw.headers)
        clock = max(clock, item.at)
        fold(state, item, clock, POLICY)
    advance(state, clock, POLICY)  # what is due at the end (a later query would do the same)
    return state


@settings(max_examples=150, deadline=None)
@given(st.lists(records(), max_size=40), st.data())
def test_a_record_delivered_again_later_changes_nothing(
    raws: list[Raw], data: st.DataObject
) -> None:
    repeated = list(raws)
    for raw in data.draw(st.lists(st.sampled_from(raws), max_size=10)) if raws else []:
        at = data.draw(st.integers(repeated.index(raw) + 1, len(repeated)))
        repeated.insert(at, raw)
    # Repeats do not move the clock, so both runs end at the same moment.
    assert run(repeated).to_document() == run(raws).to_document()


@settings(max_examples=150, deadline=None)
@given(st.lists(records(), max_size=40))
def test_delivered_and_negatives_are_a_recount_of_the_distinct_messages(raws: list[Raw]) -> None:
    state = run(raws)
    # The recount: each message is delivered once (by its receipt, or by a negative that
    # came first) and negative once (its first rating, or its first quick reply, judged by
    # its template once a send record names it).
    delivered: set[str] = set()
    negative: set[str] = set()
    rated: set[str] = set()
    replied: set[str] = set()
    waiting: dict[str, str] = {}  # replies that came before the template was known
    template_of: dict[str, str] = {}
    refusals: set[str] = set()

    def judge(msg_id: str, label: str) -> None:
        if label == "Ngừng nhận" and template_of.get(msg_id) == "t1":
            negative.add(msg_id)
            delivered.add(msg_id)

    for raw in raws:
        item = read_item(raw.kind, raw.key, raw.value, raw.headers)
        body = item.body.model_dump()
        if raw.kind == "send":
            send = body["send"]
            if send["error"] == -141:
                refusals.add(send["tracking_id"])
            elif send["error"] == 0 and send["msg_id"] not in template_of:
                template_of[send["msg_id"]] = send["template_id"]
                if send["msg_id"] in waiting:
                    judge(send["msg_id"], waiting.pop(send["msg_id"]))
            continue
        event = raw.headers.get("event_name")
        if event == "user_received_message":
            delivered.add(body["message"]["msg_id"])
        elif event == "user_feedback":
            msg_id = body["message"]["msg_id"]
            if msg_id not in rated:
                rated.add(msg_id)
                if body["message"]["rate"] <= 2:
                    negative.add(msg_id)
                    delivered.add(msg_id)
        elif event == "user_click_response_button":
            msg_id = body["msg_id"]
            if msg_id not in replied:
                replied.add(msg_id)
                if msg_id in template_of:
                    judge(msg_id, body["message"]["data"])
                else:
                    waiting[msg_id] = body["message"]["data"]
    end = START + timedelta(days=3)
    window = timedelta(days=7)
    assert state.delivered.within(end, window) == len(delivered) + len(refusals)
    assert state.negatives.within(end, window) == len(negative) + len(refusals)


@settings(max_examples=150, deadline=None)
@given(
    raws=st.lists(records(), min_size=1, max_size=40),
    later_hours=st.integers(0, 24 * 200),
    tag=st.sampled_from([1, 2, 3]),
)
def test_a_served_copy_is_a_deep_copy_for_advance_and_decide(
    raws: list[Raw], later_hours: int, tag: int
) -> None:
    """What the API does to answer (advance a copy to now, decide on it) never touches the
    live state, and gives what a full deep copy would."""
    live = run(raws)
    before = live.to_document()
    now = START + timedelta(hours=36 + later_hours)  # up to past the 6-month recipient memory
    served, deep = live.served_copy(), copy.deepcopy(live)
    request = AdmissionRequest("t1", tag, (recipient_hash("0901234567"),), 1)
    answers = []
    for state in (served, deep):
        changes = advance(state, now, POLICY)
        answers.append((changes, decide(state, request, now, POLICY, "a-new").answer))
    assert live.to_document() == before
    assert served.to_document() == deep.to_document()
    assert answers[0] == answers[1]
    # Another day change on the copies: what expires there reads as absent, key by key,
    # and the live state keeps it.
    for state in (served, deep):
        advance(state, now + timedelta(days=9), POLICY)
    assert live.to_document() == before
    assert served.to_document() == deep.to_document()
    for name in OAState.SHARED_INDEXES:
        kept = getattr(deep, name)
        for key in getattr(live, name):
            assert getattr(served, name).peek(key) == kept.peek(key)
            assert (key in getattr(served, name)) == (key in kept)
