"""tools/routing.py: the ownership map is balanced, stable and moves little when replicas change."""
import zlib

import pytest

from tools import routing


def test_map_is_balanced_and_deterministic():
    owners = routing.make_map(["r0", "r1", "r2"], 1024)
    assert owners == routing.make_map(["r2", "r0", "r1"], 1024)  # the list's order does not matter
    for r in ("r0", "r1", "r2"):
        assert 1024 / 3 * 0.8 < owners.count(r) < 1024 / 3 * 1.2


def test_adding_a_replica_moves_only_its_share_and_only_to_it():
    old = routing.make_map(["r0", "r1", "r2"], 1024)
    new = routing.make_map(["r0", "r1", "r2", "r3"], 1024)
    moved = [(o, n) for o, n in zip(old, new) if o != n]
    assert all(n == "r3" for _, n in moved)
    assert 1024 / 4 * 0.8 < len(moved) < 1024 / 4 * 1.2


def test_owner_is_crc32_of_the_id_modulo_the_buckets(tmp_path):
    path = tmp_path / "owners.map"
    path.write_text(routing.render_map(routing.make_map(["a", "b"], 7)))
    owners = routing.read_map(path)
    assert len(owners) == 7
    assert routing.owner(owners, "user-42") == owners[zlib.crc32(b"user-42") % 7]


def test_bad_replica_lists_are_refused():
    for bad in ([], ["r0", "r0"], ["has space"], ["-dash-first"]):
        with pytest.raises(ValueError):
            routing.make_map(bad)
