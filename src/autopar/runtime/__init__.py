"""Runtime: train a recipe with a Strategy, using PyTorch's own parallel APIs under torchrun.

Every technique lives in one file with one `apply_*` function. They are applied to
each model chunk in one fixed order (torchtitan's), by `parallelize.parallelize`:

  1. pipeline.py         apply_pipeline_split   cut `layers` into stage chunks (torch.distributed.pipelining)
  2. tensor_parallel.py  apply_tensor_parallel  DTensor `parallelize_module` from the model's tp_plan,
                                                with sequence parallel and vocabulary-parallel loss
  3. checkpointing.py    apply_activation_checkpointing  none / selective (attention core) / full (each block)
  4. sharding.py         apply_fsdp             FSDP2 `fully_shard`: ZeRO-2/3, and data parallel over
                                                tensor parallel (HSDP replicas for zero=0)
  5. materialize.py      apply_materialization  meta-device model -> to_empty on the device, then each
                                                rank draws only the parameter boxes it holds
     data_parallel.py    apply_ddp              DDP (ZeRO-0, and ZeRO-1 with sharding.zero1_optimizer)
  6. pipeline.py         apply_pipeline_schedule  PipelineStage per chunk + GPipe / 1F1B / Interleaved1F1B
  7. checkpoint.py       Checkpointer.resume    with --checkpoint: load DIR's latest step (DCP) into the
                                                wrapped chunks and optimizer, resharded to this layout;
                                                Checkpointer.save every N steps and at the end

Where the weights come from. The built-in families (gpt, llama, mlp, cnn, wide_linear)
are built on the meta device and steps 1-4 run there, so no rank ever holds the whole
model: step 5 allocates the rank's shards and fills them from models/init.py, whose
values are a pure function of (seed, parameter name, shape) and so equal single-process
training's whatever the layout (peak: the shard plus one block of drawn values). A user
module ("package.module:factory") or a transformers model initialises itself in its own
way, which cannot be replayed per shard: every rank builds it whole on the device (after
torch.manual_seed(seed)) and parallelizes it afterwards, as do IST and Hogwild for every
model (they keep the whole network by design).

Techniques that change the training loop rather than wrap the model:
  features.py      apply_feature_partition  data split by input features, partial products all-reduced
  local_sgd.py     apply_local_sgd          asynchronous DP: average parameters every sync_every steps
  subnet.py        apply_subnet             independent subnetwork training (Yuan et al.)
  shared_memory.py apply_threads / run_hogwild  intra-op threads, or Hogwild on shared parameters

Around them: launch.py (preflight: every strategy problem, found by autopar/validity.py
before any process starts; then the torchrun command), worker.py (per-rank entry), mesh.py (DeviceMesh),
data.py (batches), precision.py (mixed precision), optim.py (optimizers),
train.py (the step loop), report.py (what a run measured, beside the prediction).

Nothing here is imported by `import autopar.runtime`: the CLI stays fast.
"""
