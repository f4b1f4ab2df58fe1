"""Fakes the tests and the local cluster kit share: an in-memory Kubernetes API for the
controller's unit tests (kube.py); the stand-ins for what cannot run here, speaking the real
wire protocols, live beside them as they move out of e2e/."""
