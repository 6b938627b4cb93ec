"""Progress bars for long work: live on a terminal, a line every half minute in logs (CI, nohup)."""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

# transformers' own bars ("Writing model shards") would interleave with ours at every checkpoint.
hf_logging.disable_progress_bar()
# torch.compile on a CPU-only machine with a CUDA build of torch warns once per process; harmless.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def progress_bar(**kwargs) -> tqdm:
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.5 if interactive else 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(**kwargs)
