"""Suite-wide settings."""

import torch

# One intra-op thread: the tests use tiny tensors, for which a thread pool
# costs more than it gives, and on a small shared machine it oversubscribes
# the cores (measured: the model and data tests ran 5-6x slower with 2 threads).
torch.set_num_threads(1)
