"""Shared cost primitives and the step formula (no I/O, no hidden state).

  efficiency.py   named efficiency constants (fitted ones labelled, with origin)
  compute.py      roofline time of a layer's operators on one device
  collectives.py  alpha-beta collectives on the node / network hierarchy
  layers.py       per-layer costs of one micro-batch, tabulated with prefix sums
  estimate.py     the records: Workload (what the recipe asks), Estimate (what a strategy costs)
  model.py        the step: sums each technique's terms (techniques/<name>/cost.py) into an Estimate
"""
