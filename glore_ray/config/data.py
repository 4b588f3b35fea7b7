"""Where problems come from, and the policy's starting point."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from glore_ray.config.fields import check


@dataclass
class OrganismConfig:
    """The model organism: procedurally generated multi-step arithmetic word problems."""

    seed: int = 0
    """Seed of the generator; the same seed gives the same problems."""
    n_train: int = 20000
    """Problems in the training split."""
    n_test: int = 500
    """Problems in the test split (generated from a disjoint seed stream)."""
    n_validation: int = 500
    """Problems in the validation split (its own seed stream): settings are chosen on it, so that
    the test split is read once, by the final run."""
    min_steps: int = 2
    """Fewest reasoning steps in a problem (2..6)."""
    max_steps: int = 3
    """Most reasoning steps in a problem (2..6)."""
    max_operand: int = 10
    """Largest number added or subtracted (the starting amount, found or given items)."""
    max_factor: int = 5
    """Largest size of a container: products stay inside a times table a tiny model can learn."""
    max_result: int = 50
    """Largest intermediate result; larger draws are rejected."""
    distractor_prob: float = 0.3
    """Probability that a problem carries a sentence with an unused number."""

    def validate(self, key: str) -> None:
        check(2 <= self.min_steps <= self.max_steps <= 6, f"{key}.min_steps/max_steps",
               f"need 2 <= min_steps <= max_steps <= 6, got {self.min_steps}..{self.max_steps}")
        check(min(self.n_train, self.n_test, self.n_validation) >= 0, f"{key}.n_train", "split sizes must be >= 0")
        check(self.max_operand >= 10, f"{key}.max_operand", "must be >= 10")
        check(self.max_factor >= 3, f"{key}.max_factor", "must be >= 3")
        check(self.max_result >= 4 * self.max_operand, f"{key}.max_result",
               "must be >= 4 * max_operand so that every problem type can be drawn")
        check(0.0 <= self.distractor_prob <= 1.0, f"{key}.distractor_prob", "must be in [0, 1]")


@dataclass
class DataConfig:
    """Where problems come from."""

    source: Literal["organism", "files"] = "organism"
    """`organism` generates problems; `files` reads train_path/test_path (GSM8K, SVAMP or ours)."""
    train_path: str = ""
    """Train problems (local path or s3://, gs://, file:// URI) when source is `files`."""
    test_path: str = ""
    """Test problems when source is `files`."""
    validation_path: str = ""
    """Validation problems when source is `files` (optional; needed for `eval.split: validation`)."""
    keep_calculator: bool = False
    """Keep GSM8K calculator annotations like <<48/2=24>> in gold steps."""
    organism: OrganismConfig = field(default_factory=OrganismConfig)

    def validate(self, key: str) -> None:
        if self.source == "files":
            check(bool(self.train_path and self.test_path), f"{key}.train_path",
                   "source 'files' needs both train_path and test_path")
        self.organism.validate(f"{key}.organism")


@dataclass
class ModelConfig:
    """The policy's starting point: a pretrained Hugging Face folder, or a tiny Llama built from
    scratch (the model organism's) when `pretrained` is empty."""

    pretrained: str = ""
    """A Hugging Face model folder every node can read (e.g. LLaMA-2 13B on shared storage)."""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    """hidden_size / num_heads is the head dim; vLLM's CPU attention needs 32, 64, 80, 96, 112 or 128."""
    intermediate_size: int = 512
    vocab_size: int = 512
    """Target size of the byte-level BPE vocabulary trained on the task's text."""
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True

    def validate(self, key: str) -> None:
        check(self.hidden_size % self.num_heads == 0, f"{key}.num_heads", "must divide hidden_size")
        head_dim = self.hidden_size // self.num_heads
        check(head_dim in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256), f"{key}.num_heads",
               f"head dim {head_dim} is not supported by vLLM's attention (use 32, 64, 80, ...)")
        check(self.vocab_size >= 300, f"{key}.vocab_size", "byte-level BPE needs >= 300 (256 bytes + specials)")
