"""The processor group's partition assignor: balanced, sticky, and it tells everyone who owns what.

Kafka lets one member of a group (the leader) assign the partitions, from what
each member says of itself when it joins. Every member says the address it
serves the API on and the partitions it owns now; the leader keeps partitions
where they are while the load stays balanced (a moved partition is restored
again from its snapshots), hands out the rest, and sends each member, with its
own partitions, the whole table partition -> owner's address. That is how an
instance knows where to forward a request for an OA it does not own: the
pattern of Kafka Streams' `application.server`, and the table is exactly as
current as the group's generation, with no other topic or registry to keep.

Any client that reaches the brokers can join the group and say anything of
itself, and the leader is just another member. So with a secret the instances
share (`api.cluster_secret`), each member signs the address it says, every
entry of the table carries that signature, and each member keeps only the
entries it can verify: a member that cannot sign is never forwarded to. The
table holds `host:port` only (no scheme, path or user); the scheme is this
member's own. Without a secret, the table is kept unsigned, and the forwarder
sends nothing anywhere.

`plan` is the assignment itself, without Kafka's types.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from service.logsetup import get_logger

_log = get_logger("log")

# host:port, the host a name or an IPv4 or a bracketed IPv6 address: nothing else reaches a URL.
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")
_ADDRESS_LABEL = b"zns-gate address\0"


@dataclass(frozen=True)
class Member:
    """What a member says of itself when it joins."""

    address: str | None
    owned: frozenset[int]
    """The partitions (of the topic being planned) it owns now."""


def plan(members: Mapping[str, Member], partitions: Iterable[int]) -> dict[str, list[int]]:
    """Member id -> its partitions: every partition to one member, counts within one of
    each other, and as few partitions moved away from their current owner as that allows."""
    wanted = sorted(set(partitions))
    ids = sorted(members)
    if not ids:
        return {}
    base, extra = divmod(len(wanted), len(ids))
    out: dict[str, list[int]] = {member_id: [] for member_id in ids}
    free = set(wanted)
    # Keep what each member owns, up to its fair share (a partition two members claim,
    # after a split, goes to the first of them).
    for member_id in ids:
        for partition in sorted(members[member_id].owned & free)[:base]:
            out[member_id].append(partition)
            free.discard(partition)
    # Up to `extra` members may hold one more: those that own one more keep it.
    for member_id in ids:
        if extra == 0:
            break
        kept = sorted(members[member_id].owned & free)
        if kept and len(out[member_id]) == base:
            out[member_id].append(kept[0])
            free.discard(kept[0])
            extra -= 1
    # The rest to whoever holds least.
    for partition in sorted(free):
        member_id = min(ids, key=lambda m: (len(out[m]), m))
        out[member_id].append(partition)
    return {member_id: sorted(held) for member_id, held in out.items()}


class AddressingAssignor:
    """aiokafka's assignor interface (name, metadata, assign, on_assignment) for one member.

    aiokafka calls these on the object given in `partition_assignment_strategy`; an
    instance (not the class) carries this member's address and what it owns.
    """

    name = "zns-gate-addressing"
    version = 0

    def __init__(self, address: str | None, secret: bytes | None = None) -> None:
        """`address`: this member's URL (`http://host:port`); `secret`: the cluster's."""
        parts = urlsplit(address) if address is not None else None
        self.address = parts.netloc if parts is not None and _valid(parts.netloc) else None
        self._scheme = parts.scheme if parts is not None and parts.scheme else "http"
        self._secret = secret
        self.owned: frozenset[tuple[str, int]] = frozenset()
        self.owners: dict[str, dict[int, str]] = {}
        """Topic -> partition -> its owner's URL, from the last assignment."""

    def sign(self, address: str) -> str | None:
        """The signature of `address` (host:port) under the cluster's secret, if any."""
        if self._secret is None:
            return None
        return hmac.new(self._secret, _ADDRESS_LABEL + address.encode(), hashlib.sha256).hexdigest()

    def _trusted(self, address: object, mac: object) -> bool:
        if not isinstance(address, str) or not _valid(address):
            return False
        if self._secret is None:
            return True  # kept to say that the partition has an owner; never forwarded to
        expected = self.sign(address)
        return isinstance(mac, str) and expected is not None and hmac.compare_digest(mac, expected)

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        owned = sorted(f"{topic}:{partition}" for topic, partition in self.owned)
        mac = self.sign(self.address) if self.address is not None else None
        user_data = orjson.dumps({"address": self.address, "mac": mac, "owned": owned})
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), user_data)

    def assign(
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        said = {member_id: _said(metadata) for member_id, metadata in members.items()}
        topics = sorted({topic for m in members.values() for topic in m.subscription})
        by_member: dict[str, list[tuple[str, list[int]]]] = {m: [] for m in members}
        table: dict[str, dict[str, dict[str, str | None]]] = {}
        for topic in topics:
            claims = {
                member_id: Member(address, frozenset(p for t, p in owned if t == topic))
                for member_id, (address, _, owned) in said.items()
                if topic in members[member_id].subscription
            }
            planned = plan(claims, cluster.partitions_for_topic(topic) or set())
            # Passed on as each member signed it: every member checks the table itself.
            table[topic] = {
                str(p): {"address": said[member_id][0], "mac": said[member_id][1]}
                for member_id, held in planned.items()
                for p in held
            }
            for member_id, held in planned.items():
                by_member[member_id].append((topic, held))
        user_data = orjson.dumps({"owners": table})
        return {
            member_id: ConsumerProtocolMemberAssignment(self.version, assignment, user_data)
            for member_id, assignment in by_member.items()
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        self.owned = frozenset((tp.topic, tp.partition) for tp in assignment.partitions())
        try:
            table = orjson.loads(assignment.user_data or b"{}")["owners"]
            self.owners = {
                topic: {
                    int(p): f"{self._scheme}://{entry['address']}"
                    for p, entry in owners.items()
                    if isinstance(entry, dict)
                    and self._trusted(entry.get("address"), entry.get("mac"))
                }
                for topic, owners in table.items()
            }
        except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError):
            _log.warning("an assignment without the owners' table; forwarding is off")
            self.owners = {}


def _valid(address: str) -> bool:
    return _HOST_PORT.fullmatch(address) is not None


def _said(
    metadata: ConsumerProtocolMemberMetadata,
) -> tuple[str | None, str | None, set[tuple[str, int]]]:
    """(address, its signature, owned (topic, partition)s) from a member's metadata;
    nothing if unreadable."""
    try:
        said = orjson.loads(metadata.user_data or b"{}")
        address, mac = said.get("address"), said.get("mac")
        owned = set()
        for item in said.get("owned", ()):
            topic, _, partition = str(item).rpartition(":")
            owned.add((topic, int(partition)))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None, None, set()
    return (
        address if isinstance(address, str) and _valid(address) else None,
        mac if isinstance(mac, str) else None,
        owned,
    )
