"""`partition_for` is Kafka's default partitioner, checked against the Java client's values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.log.base import partition_for

# murmur2 results of org.apache.kafka.common.utils.Utils as its UtilsTest states them
# (Java ints, so signed).
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "java_hash"), JAVA_MURMUR2.items())
@pytest.mark.parametrize("partitions", [1, 3, 12, 100])
def test_matches_the_java_client(key: bytes, java_hash: int, partitions: int) -> None:
    # Utils.toPositive(murmur2(key)) % numPartitions
    assert partition_for(key, partitions) == (java_hash & 0x7FFFFFFF) % partitions


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=500))
def test_always_a_valid_partition(key: bytes, partitions: int) -> None:
    assert 0 <= partition_for(key, partitions) < partitions


def test_needs_a_partition() -> None:
    with pytest.raises(ValueError, match="partitions"):
        partition_for(b"k", 0)
