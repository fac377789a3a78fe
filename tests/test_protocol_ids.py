"""Fresh ids: of the id grammar, and never mistaken for a command-line option."""

from __future__ import annotations

import argparse

from webconf.protocol import new_id, valid_id


def test_new_ids_are_valid_and_never_start_with_a_dash() -> None:
    ids = [new_id(12) for _ in range(20_000)]  # ~1/64 of raw base64url starts with "-"
    assert all(valid_id(i) and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
    assert {len(new_id(12)), len(new_id(16))} == {16, 22}


def test_an_id_can_follow_an_option() -> None:
    """`webconf fetch --item ID` failed when a random item id began with "-"."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--item")
    for _ in range(2_000):
        item = new_id(12)
        assert parser.parse_args(["--item", item]).item == item
