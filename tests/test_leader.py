"""A replica leads by kopf's peering rule: no other live peer of higher or equal priority."""

from __future__ import annotations

import datetime as dt

from llmservice_operator.controller.leader import Leadership, leads

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def _peer(priority: int, seconds_ago: int = 1, lifetime: int = 60) -> dict:
    seen = (NOW - dt.timedelta(seconds=seconds_ago)).isoformat()
    return {"priority": priority, "lastseen": seen, "lifetime": lifetime}


def test_leads_unless_a_live_peer_outranks_or_ties():
    me = "pod-a"
    assert leads({}, me, 100, NOW)
    assert leads({me: _peer(100), "pod-b": _peer(50)}, me, 100, NOW)
    assert not leads({me: _peer(100), "pod-b": _peer(200)}, me, 100, NOW)
    assert not leads({me: _peer(100), "pod-b": _peer(100)}, me, 100, NOW), "kopf pauses both on a tie"
    assert leads({me: _peer(100), "pod-b": _peer(200, seconds_ago=120)}, me, 100, NOW), "a dead peer is ignored"


def test_leadership_follows_the_peering_object_and_keeps_its_answer_through_errors():
    status: dict = {"status": {}}
    answers = [status]
    lead = Leadership(
        lambda: answers[-1] if not isinstance(answers[-1], Exception) else (_ for _ in ()).throw(answers[-1]), "me", 10
    )
    lead.refresh()
    assert lead.active()
    status["status"] = {"other": {"priority": 20, "lastseen": dt.datetime.now(dt.UTC).isoformat()}}
    lead.refresh()
    assert not lead.active()
    answers.append(ConnectionError("api down"))
    lead.refresh()
    assert not lead.active()
    assert Leadership(None, "me", 10).active(), "standalone always leads"
