"""Profiling on the meta device: per-layer FLOPs, bytes and activations (profiler.py, trace.py),
the tensor-parallel pairs of any module (tp_pairs.py), and the facts the strategy rules read
(facts.py), all into the data of types.py."""
