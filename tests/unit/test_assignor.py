"""The processor group's assignor: balanced, sticky, and the owners' table it hands out."""

from __future__ import annotations

from collections import Counter

import orjson
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from hypothesis import given
from hypothesis import strategies as st

from service.log.assignor import AddressingAssignor, Member, plan


def members(owned: dict[str, set[int]]) -> dict[str, Member]:
    return {m: Member(f"http://{m}", frozenset(p)) for m, p in owned.items()}


@given(
    count=st.integers(1, 40),
    names=st.lists(st.text("abcdef", min_size=1, max_size=3), min_size=1, max_size=7, unique=True),
    claims=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 45)), max_size=60),
)
def test_every_partition_has_one_owner_and_the_load_is_even(
    count: int, names: list[str], claims: list[tuple[int, int]]
) -> None:
    owned: dict[str, set[int]] = {name: set() for name in names}
    for who, partition in claims:  # arbitrary, overlapping, even unknown partitions
        owned[names[who % len(names)]].add(partition)
    planned = plan(members(owned), range(count))
    held = [p for partitions in planned.values() for p in partitions]
    assert sorted(held) == list(range(count))
    sizes = [len(partitions) for partitions in planned.values()]
    assert max(sizes) - min(sizes) <= 1


def test_a_member_leaving_moves_only_its_own_partitions() -> None:
    before = {"a": {0, 3, 6, 9}, "b": {1, 4, 7, 10}, "c": {2, 5, 8, 11}}
    after = plan(members({"a": before["a"], "c": before["c"]}), range(12))
    assert set(after["a"]) >= before["a"]
    assert set(after["c"]) >= before["c"]
    assert sorted(after["a"] + after["c"]) == list(range(12))


def test_a_member_joining_takes_only_what_balance_needs() -> None:
    before = {"a": set(range(0, 6)), "b": set(range(6, 12))}
    after = plan(members({**before, "c": set()}), range(12))
    moved = sum(1 for m in ("a", "b") for p in before[m] if p not in after[m])
    assert moved == 4
    assert len(after["c"]) == 4


def test_a_balanced_group_keeps_its_assignment() -> None:
    before = {"a": {5, 1}, "b": {0, 3}, "c": {2, 4}}
    assert {m: set(p) for m, p in plan(members(before), range(6)).items()} == before


class _Cluster:
    """The one thing an assignor asks of the cluster's metadata."""

    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self._partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._partitions.get(topic)


def test_every_member_learns_every_owners_address() -> None:
    assignors = {name: AddressingAssignor(f"http://{name}:8080") for name in ("m1", "m2", "m3")}
    said = {
        name: ConsumerProtocolMemberMetadata.decode(a.metadata(["zns.events"]).encode())
        for name, a in assignors.items()
    }
    leader = assignors["m1"]
    assignments = leader.assign(_Cluster({"zns.events": set(range(12))}), said)
    for name, assignor in assignors.items():
        assignor.on_assignment(assignments[name])
        assert {p for _, p in assignor.owned} == {
            p for topic, ps in assignments[name].assignment for p in ps
        }
    tables = [a.owners["zns.events"] for a in assignors.values()]
    assert tables[0] == tables[1] == tables[2]
    assert Counter(tables[0].values()) == {f"http://{n}:8080": 4 for n in assignors}
    for name, assignor in assignors.items():
        assert all(tables[0][p] == f"http://{name}:8080" for _, p in assignor.owned)

    # Rejoining, each says what it owns: the same assignment comes back.
    said = {
        name: ConsumerProtocolMemberMetadata.decode(a.metadata(["zns.events"]).encode())
        for name, a in assignors.items()
    }
    again = leader.assign(_Cluster({"zns.events": set(range(12))}), said)
    assert {n: a.assignment for n, a in again.items()} == {
        n: a.assignment for n, a in assignments.items()
    }


def test_unreadable_metadata_owns_nothing_and_gets_no_address() -> None:
    leader = AddressingAssignor("http://a:1")
    said = {
        "a": ConsumerProtocolMemberMetadata.decode(leader.metadata(["t"]).encode()),
        "b": ConsumerProtocolMemberMetadata(0, ["t"], b"\xff not json"),
    }
    assignments = leader.assign(_Cluster({"t": {0, 1}}), said)
    leader.on_assignment(assignments["a"])
    assert set(leader.owners["t"].values()) == {"http://a:1"}
    assert len(leader.owners["t"]) == 1  # b's partition has no address to forward to


SECRET = b"a-cluster-secret-for-tests"


def _said(assignor: AddressingAssignor, topics: list[str]) -> ConsumerProtocolMemberMetadata:
    return ConsumerProtocolMemberMetadata.decode(assignor.metadata(topics).encode())


def test_only_addresses_signed_with_the_cluster_secret_are_forwarded_to() -> None:
    honest = AddressingAssignor("http://10.0.0.1:8080", SECRET)
    other_secret = AddressingAssignor("http://10.0.0.2:8080", b"another-secret-entirely")
    unsigned = AddressingAssignor("http://10.0.0.3:8080")
    said = {
        "honest": _said(honest, ["t"]),
        "other": _said(other_secret, ["t"]),
        "unsigned": _said(unsigned, ["t"]),
        # A member that copies a genuine signature onto its own address.
        "copier": ConsumerProtocolMemberMetadata(
            0,
            ["t"],
            orjson.dumps(
                {
                    "address": "10.6.6.6:80",
                    "mac": orjson.loads(_said(honest, ["t"]).user_data)["mac"],
                    "owned": [],
                }
            ),
        ),
    }
    # Whoever leads (here the unsigned member), each member checks the table it is sent.
    assignments = unsigned.assign(_Cluster({"t": set(range(8))}), said)
    honest.on_assignment(assignments["honest"])
    assert set(honest.owners["t"].values()) == {"http://10.0.0.1:8080"}
    assert len(honest.owners["t"]) == 2  # its own partitions only


def test_the_table_holds_host_and_port_only() -> None:
    signer = AddressingAssignor("http://10.0.0.1:8080", SECRET)
    said = orjson.loads(_said(signer, ["t"]).user_data)
    assert said["address"] == "10.0.0.1:8080"
    assignments = signer.assign(_Cluster({"t": {0}}), {"a": _said(signer, ["t"])})
    table = orjson.loads(assignments["a"].user_data)["owners"]["t"]
    assert table["0"]["address"] == "10.0.0.1:8080"

    # A path, a user or a query smuggled into the address, even signed, is never used.
    for address in ("evil.example:80/steal", "user@evil.example:80", "evil.example:80?x=1"):
        entry = {"address": address, "mac": signer.sign(address)}
        forged = {"owners": {"t": {"0": entry}}}
        signer.on_assignment(
            type(assignments["a"])(0, assignments["a"].assignment, orjson.dumps(forged))
        )
        assert signer.owners["t"] == {}, address
