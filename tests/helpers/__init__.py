"""Test helpers: a scripted (possibly hostile) neighbour and a deterministic frame fuzzer."""
