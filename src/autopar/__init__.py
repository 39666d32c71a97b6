"""autopar: find, explain and run the fastest way to parallelize a training recipe.

Layout (where to look):
  spec/      typed inputs: recipe (model, data, training), cluster, strategy
  hardware/  device and cluster presets as data, each number with its source
  models/    built-in model families and the builder for user modules
  profile/   per-layer profile of any nn.Module, traced on the meta device
  cost/      pure cost functions: compute, memory, communication, step time
  plan/      search space, stage-layout dynamic program, ranking, explanations
  runtime/   applies a strategy with PyTorch's parallel APIs under torchrun
  cli/       the `autopar` command
"""

__version__ = "0.1.0"
