"""Training the policy and the PRM on the agents' own experience (``ponder.training``).

- ``examples``: the chat example format (loss on assistant turns) and its JSONL files;
- ``datasets``: examples from run directories and memory: rejection sampling (STaR, RFT),
  self-correction (RISE / SCoRe style), reflections that worked (Retroformer style), embodied
  trajectories, each with provenance;
- ``sft``: supervised fine-tuning (full or LoRA), resumable, writing a model folder the policy,
  the engine, ``ponder serve`` and the value-head PRM load like the default;
- ``evaluate``: the held-out evaluation (greedy, majority / PRM best-of-n on one sample set,
  reflexion against its baselines, a word-problem transfer set);
- ``improve``: ``ponder improve``, the loop collect -> data -> fine-tune -> PRM -> evaluate.
"""

from ponder.training.datasets import DatasetReport, build_dataset, check_lengths
from ponder.training.examples import KINDS, ChatExample, read_examples, write_examples
from ponder.training.sft import SFTConfig, SFTResult, train_sft

__all__ = [
    "KINDS",
    "ChatExample",
    "DatasetReport",
    "SFTConfig",
    "SFTResult",
    "build_dataset",
    "check_lengths",
    "read_examples",
    "train_sft",
    "write_examples",
]
