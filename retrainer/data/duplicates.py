"""Copies: which usable images are the same photograph, found without comparing every pair.

Exact copies share their exact fingerprint (one dictionary). Near copies are found by locality-
sensitive hashing of the thumbnails (`retrainer.data.fingerprints`): each of TABLES tables files
every image under the signs of BITS random projections of its thumbnail, so two thumbnails fall in
one bucket with a probability that grows with their correlation; only images that share a bucket
are compared, by the correlation itself. At the least correlation of copies (0.99) a pair shares
no bucket with a probability below 0.1%; unrelated images almost never share one, so the work
grows with the number of images, not with its square. The projections come from a fixed seed:
every run groups the same images alike.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from retrainer.data.fingerprints import SAME_PHOTOGRAPH, THUMBNAIL_SIDE, thumbnails

TABLES = 12
BITS = 16
SMALL_BUCKET = 16  # buckets up to this size are compared all at once, larger ones by blocks
ROWS_AT_ONCE = 2048  # rows of a large bucket compared at once: bounded memory


class Groups:
    """Union-find over image indices: who is the same photograph as whom."""

    def __init__(self, count: int) -> None:
        self.parent = list(range(count))

    def find(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def join(self, first: int, second: int) -> None:
        self.parent[self.find(first)] = self.find(second)

    def of_two_or_more(self) -> list[list[int]]:
        members: dict[int, list[int]] = defaultdict(list)
        for index in range(len(self.parent)):
            members[self.find(index)].append(index)
        return sorted(group for group in members.values() if len(group) > 1)


def find_copies(exact: list[str | None], perceptual: list[str | None]) -> list[list[int]]:
    """Groups (of two or more indices, in order) of images that are the same photograph; an image
    without fingerprints is in none."""
    groups = Groups(len(exact))
    first_with: dict[str, int] = {}
    for index, fingerprint in enumerate(exact):
        if fingerprint is not None:
            groups.join(index, first_with.setdefault(fingerprint, index))
    known = [index for index, fingerprint in enumerate(perceptual) if fingerprint is not None]
    if known:
        rows = thumbnails([str(perceptual[index]) for index in known])
        for first, second in near_pairs(rows):
            groups.join(known[first], known[second])
    return groups.of_two_or_more()


def near_pairs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Pairs of rows (unit vectors) whose correlation is at least SAME_PHOTOGRAPH."""
    projections = np.random.default_rng(0).standard_normal(
        (TABLES, THUMBNAIL_SIDE * THUMBNAIL_SIDE, BITS)
    )
    weights = 1 << np.arange(BITS)
    contrast = rows.any(axis=1)  # a flat image has no shape to compare
    pairs: set[tuple[int, int]] = set()
    for table in range(TABLES):
        keys = ((rows @ projections[table].astype(np.float32)) > 0) @ weights
        order = np.flatnonzero(contrast)
        order = order[np.argsort(keys[order], kind="stable")]
        starts = np.flatnonzero(np.r_[True, np.diff(keys[order]) != 0])
        sizes = np.diff(np.r_[starts, len(order)])
        bucket = np.repeat(np.arange(len(starts)), sizes)  # each sorted row's bucket
        # Small buckets all at once: each row against the next ones of its bucket.
        for offset in range(1, SMALL_BUCKET):
            same = bucket[:-offset] == bucket[offset:]
            first, second = order[:-offset][same], order[offset:][same]
            close = np.einsum("ij,ij->i", rows[first], rows[second]) >= SAME_PHOTOGRAPH
            pairs.update(zip(first[close].tolist(), second[close].tolist(), strict=True))
        # The few large ones (many alike images) a block at a time.
        for start, size in zip(
            starts[sizes > SMALL_BUCKET], sizes[sizes > SMALL_BUCKET], strict=True
        ):
            pairs.update(similar_within(rows, order[start : start + size]))
    return sorted((min(pair), max(pair)) for pair in pairs)


def similar_within(rows: np.ndarray, bucket: np.ndarray) -> set[tuple[int, int]]:
    """Every pair of a large bucket whose correlation is at least SAME_PHOTOGRAPH."""
    found = set()
    members = rows[bucket]
    for start in range(0, len(bucket), ROWS_AT_ONCE):
        block = members[start : start + ROWS_AT_ONCE] @ members.T
        for row, column in np.argwhere(block >= SAME_PHOTOGRAPH):
            first, second = bucket[start + row], bucket[column]
            if first < second:
                found.add((int(first), int(second)))
    return found
