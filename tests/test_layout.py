"""The layout: one place names every key, and the README's table says the same."""

from __future__ import annotations

import re
from pathlib import Path

from retrainer.layout import ModelKeys, dataset_in, shard_in, shard_key, store_map, work_folder

README = Path(__file__).resolve().parent.parent / "README.md"


def first_column(line: str) -> str:
    """A key (which may hold single spaces: `<work key>`) ends at two spaces."""
    return re.split(r"\s{2,}", line.strip())[0]


def readme_store_keys() -> list[str]:
    """The keys of the README's table "What a run leaves in the store", in its order."""
    section = README.read_text().split("## What a run leaves in the store\n\n", 1)[1]
    table = section.split("\n\n", 1)[0].splitlines()
    # A version's files stand under its first file's name, at the column after the version.
    column = len("    " + ModelKeys("<name>").version("<version>"))
    keys: list[str] = []
    for line in table:
        if line.startswith("    ") and line[4] != " ":
            keys.append(first_column(line))
            folder = keys[-1][: column - 4]
        elif line[:column].isspace() and line[column] != " ":
            keys.append(folder + first_column(line))
    return [key.removesuffix("...") for key in keys]


def test_the_readme_lists_exactly_the_keys_the_layout_names() -> None:
    assert readme_store_keys() == store_map()


def test_keys_read_back_into_what_named_them() -> None:
    keys = ModelKeys("digits")
    assert keys.version_in(keys.version_file("20261130T020000Z-ab12", "model.keras")) == (
        "20261130T020000Z-ab12"
    )
    assert keys.work_in(keys.work_record("f" * 64)) == "f" * 64
    assert keys.served_number_in(keys.served(12) + "saved_model.pb") == "12"
    assert keys.checkpointed_work_in(keys.checkpoint("e" * 64) + "latest.json") == work_folder(
        "e" * 64
    )
    assert shard_in(shard_key("c" * 64)) == "c" * 64
    assert dataset_in("prepared/0123/abcd/" + shard_key("c" * 64)) == (
        "prepared/0123/abcd",
        shard_key("c" * 64),
    )
