"""Opening a key-value bucket, against a stand-in JetStream context."""

from __future__ import annotations

from typing import Any

import nats.js.errors
from nats.js import api

from swe_fleet.nats.kv import open_bucket


class StandInJetStream:
    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.created: list[api.KeyValueConfig] = []

    async def key_value(self, bucket: str) -> Any:
        if bucket not in self.existing:
            raise nats.js.errors.BucketNotFoundError
        return f"kv:{bucket}"

    async def create_key_value(self, config: api.KeyValueConfig) -> Any:
        self.created.append(config)
        self.existing.add(config.bucket)
        return f"kv:{config.bucket}"


async def test_an_existing_bucket_is_bound_and_a_missing_one_created_on_file_storage() -> None:
    """Bound when it exists (nothing created); created when missing: file storage, one revision
    per key, the given ttl (none by default)."""
    js = StandInJetStream({"THERE"})
    assert await open_bucket(js, "THERE") == "kv:THERE" and js.created == []
    assert await open_bucket(js, "NEW", ttl_s=60) == "kv:NEW"
    assert await open_bucket(js, "NO_TTL") == "kv:NO_TTL"
    [new, no_ttl] = js.created
    assert (new.bucket, new.history, new.ttl, new.storage) == ("NEW", 1, 60, api.StorageType.FILE)
    assert no_ttl.ttl is None
