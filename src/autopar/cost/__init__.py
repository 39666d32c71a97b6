"""Pure cost functions: time and memory of a strategy (no I/O, no hidden state).

  efficiency.py   named efficiency constants (fitted ones labelled, with origin)
  compute.py      roofline time of a layer's operators on one device
  collectives.py  alpha-beta collectives on the node / network hierarchy
  layers.py       per-layer forward/backward time under tensor parallelism
  memory.py       model states (ZeRO), activations (Korthikanti et al.), buffers
  pipeline.py     stage layout, bubble, micro-batches in flight
  data_parallel.py gradient synchronisation, ZeRO / FSDP traffic, local SGD
  convergence.py  statistical efficiency of asynchronous and subnetwork training
  estimate.py     the step: combines everything into an Estimate
"""
