"""SecretWatch: which services a changed Secret wakes, and that it holds nothing once unused."""

from __future__ import annotations

from llmservice_operator.controller.secret_watch import SecretWatch


def test_a_changed_or_deleted_secret_wakes_the_services_that_read_it():
    versions = {("ns", "keys"): "1", ("ns", "tls"): "5"}
    forgotten, woken = [], []
    w = SecretWatch(lambda ns, name: versions.get((ns, name)), period=0, forget=lambda *k: forgotten.append(k))
    w.bind(woken.append, lambda: True)
    w.track(("ns", "a"), {("ns", "keys"): "1"})
    w.track(("ns", "b"), {("ns", "keys"): "1", ("ns", "tls"): "5"})
    assert w.poll() == [] and len(w) == 2
    versions[("ns", "tls")] = "6"
    assert w.poll() == [("ns", "b")] == woken
    assert forgotten == [("ns", "tls")], "the reconcile reads the Secret again, not a remembered copy"
    assert w.poll() == [] and len(w) == 1, "not read again until a reconcile records its new version"
    w.track(("ns", "b"), {("ns", "keys"): "1", ("ns", "tls"): "6"})
    del versions[("ns", "keys")]
    assert sorted(w.poll()) == [("ns", "a"), ("ns", "b")]


def test_nothing_is_kept_for_services_gone_or_secrets_no_longer_used():
    w = SecretWatch(lambda ns, name: "1", period=0)
    w.track(("ns", "a"), {("ns", "keys"): "1", ("ns", "tls"): "1"})
    w.track(("ns", "b"), {("ns", "keys"): "1"})
    w.track(("ns", "a"), {("ns", "keys"): "1"})  # TLS turned off
    assert len(w) == 1
    w.untrack(("ns", "a"))
    assert len(w) == 1, "b still reads it"
    w.untrack(("ns", "b"))
    assert len(w) == 0


def test_a_read_error_is_tried_again_at_the_next_period():
    calls = []

    def read(ns: str, name: str) -> str:
        calls.append(name)
        if len(calls) == 1:
            raise ConnectionError("API server away")
        return "2"

    w = SecretWatch(read, period=0)
    w.track(("ns", "a"), {("ns", "keys"): "1"})
    assert w.poll() == []
    assert w.poll() == [("ns", "a")]
