"""Runtime: train a recipe with a Strategy, using PyTorch's own parallel APIs under torchrun.

The techniques' applications live beside their costs and rules, in
autopar/techniques/<name>/apply.py; `parallelize.parallelize` applies the active ones in
the fixed order of autopar.techniques.TECHNIQUES. Here is what surrounds them:

  launch.py        preflight (every strategy problem, from the model's profile facts, before any
                   process starts) and the torchrun command, one node or several
  train.py         the step loop: build, parallelize, step, measure; returns records
  parallelize.py   the techniques' apply/finish, in order, over a `Parallelized` (parallelized.py)
  materialize.py   a meta-device model allocated on the device, each rank drawing only its shards
  mesh.py          the DeviceMesh (pp, dp_replicate, dp_shard, tp)
  data.py          batches (synthetic or the recipe's loader), per replica and step
  precision.py     mixed precision; optim.py the recipe's optimizer; names.py parameter names
  checkpoint.py    DCP save / resume into any synchronous layout
  report.py        what a run measured (the CLI formats it: autopar/cli/report.py)

Where the weights come from. The built-in families (gpt, llama, mlp, cnn, wide_linear)
are built on the meta device and the sharding techniques run there, so no rank ever
holds the whole model: materialization then allocates the rank's shards and fills them
from models/init.py, whose values are a pure function of (seed, parameter name, shape)
and so equal single-process training's whatever the layout. A user module or a
transformers model initialises itself in its own way, which cannot be replayed per
shard: every rank builds it whole on the device (after torch.manual_seed(seed)), as do
IST and Hogwild for every model (they keep the whole network by design).

Nothing here is imported by `import autopar.runtime`, and nothing in spec/, profile/,
cost/, plan/ or the techniques' rules, spaces and costs imports it (a test checks).
"""
