"""A trained ORM or SORM folder as a step scorer (the ensemble's StepScorer), in this process."""

from __future__ import annotations

from collections.abc import Sequence

from glore_ray.prompts import solve_prompt


class HFStepScorer:
    """P(good) at the end of every step, from an `AutoModelForTokenClassification` folder."""

    def __init__(self, model_dir: str, batch_size: int = 32):
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForTokenClassification.from_pretrained(model_dir).to(self.device).eval()
        self.max_length = self.model.config.max_position_embeddings
        self.batch_size = batch_size

    def score(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        import torch

        from glore_ray.sft import collate
        from glore_ray.step_reward import encode_step_example, step_scores

        scores: list[list[float]] = [[] for _ in questions]
        todo = [i for i, s in enumerate(steps) if s]  # a solution without steps has nothing to score
        for start in range(0, len(todo), self.batch_size):
            rows = todo[start:start + self.batch_size]
            examples = [encode_step_example(self.tokenizer, solve_prompt(questions[i]), list(steps[i]),
                                            [0] * len(steps[i]), self.max_length, f"solution {i}") for i in rows]
            batch = {k: v.to(self.device) for k, v in collate(examples, self.tokenizer.pad_token_id).items()}
            with torch.no_grad():
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            for i, values in zip(rows, step_scores(logits, batch["labels"]), strict=True):
                scores[i] = values
        return scores
