"""Training the policy and the PRM on the agents' own experience (``ponder.training``).

- ``examples``: the chat example format (loss on assistant turns) and its JSONL files;
- ``datasets``: examples from run directories and memory: rejection sampling (STaR, RFT),
  self-correction (RISE / SCoRe style), reflections that worked (Retroformer style), embodied
  trajectories, each with provenance;
- ``sft``: supervised fine-tuning (full or LoRA), resumable, writing a model folder the policy,
  the engine, ``ponder serve`` and the value-head PRM load like the default.
"""

from ponder.training.examples import KINDS, ChatExample, read_examples, write_examples

__all__ = ["KINDS", "ChatExample", "read_examples", "write_examples"]
