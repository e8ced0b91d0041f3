import os

import torch

# Two cores are shared by the whole suite: keep torch from oversubscribing them.
torch.set_num_threads(int(os.environ.get("SSDBENCH_TEST_THREADS", "2")))
