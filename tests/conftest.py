"""Session-wide test settings."""

import torch

# The daemon runs torch on one thread by default (--torch-threads): on these 2-core
# machines two OpenMP threads next to a busy process are ~100x slower. In-process
# tests get the same setting; subprocess daemons set it themselves.
torch.set_num_threads(1)
