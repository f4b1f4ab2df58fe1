"""Builders for what the local cluster runs that is not a Go binary (models; later images).

Each builder caches its output under ``e2e.bins.cache_root()`` keyed by a hash of its inputs
and marks a finished build with a stamp file, so a warm call costs nothing.
"""
