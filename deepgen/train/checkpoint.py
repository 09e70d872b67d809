"""The files of a training checkpoint folder (written and read by deepgen.train.loop; a pretraining
checkpoint is also what fine-tuning can start from, deepgen.tasks.bert)."""

STATE_FILE = "state.pt"  # models, optimizers, epoch, history, rank 0's random state
BEST_FILE = "best.pt"  # the weights of the best epoch so far by train.monitor: what is evaluated and registered
SPEC_HASH_FILE = "spec_hash.txt"  # in every checkpoint: the spec_hash() it was trained under
RANK_RNG_FILE = "rng-rank{rank}.pt"  # the random state of rank > 0 (rank 0's is in STATE_FILE)
