"""Fakes the tests and the local cluster kit share: an in-memory Kubernetes API for the
controller's unit tests (kube.py), a fake GKE API over the real REST wire protocol
(fake_gke.py), the model engine's CPU stand-in that Ray Serve runs (engine_standin.py), and a
virtual clock for the queues (clock.py)."""
