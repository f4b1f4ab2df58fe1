"""Does a live object still hold everything we want? Pure; decides whether to write at all."""

from __future__ import annotations

from typing import Any


def contains(live: Any, desired: Any) -> bool:
    """True when every field of `desired` is in `live` with the same value. Fields the API
    server or other controllers added (defaults, status, their own labels) do not matter;
    lists must match item by item, because server-side apply owns them whole."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(a, b) for a, b in zip(live, desired, strict=False))
        )
    return live == desired


def up_to_date(live: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    if live is None:
        return False
    fields = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
    return contains(live, fields)


def merge_patch(previous: Any, new: Any) -> Any:
    """A JSON merge patch turning `previous` into `new`: keys that disappeared become null
    (a plain merge would keep them, and the next comparison would never settle)."""
    if not (isinstance(previous, dict) and isinstance(new, dict)):
        return new
    patch = {k: merge_patch(previous.get(k), v) for k, v in new.items()}
    patch.update({k: None for k in previous if k not in new})
    return patch
