"""The miniature pipeline config the job, pipeline and Serve tests share: every stage but expert
iteration, tiny sizes, the transformers engine (vLLM's start, ~45 s per stage here, is covered by
test_stages and test_engines). Expert iteration's rows are tested in test_stages and its wiring
in test_pipeline (the organism benchmark runs a round)."""

from __future__ import annotations

MINIATURE = ["data.organism.n_train=300", "data.organism.n_test=20", "engine.backend=hf", "sampling.max_tokens=48",
             "policy.warmup_steps=1", "policy.batch_size=16",
             # long enough to stop the job at a checkpoint and resume it (conftest.miniature_job)
             "policy.steps=40", "policy.checkpoint_every=10", "policy.log_every=10",
             "expert_iteration.rounds=0",
             "rollouts.max_questions=8", "rollouts.k=3", "labels.k=2", "eval.n_problems=8",
             "rollouts.pool.batch_size=2",  # four batches, as eval's below: metrics show while the stage runs
             "labels.prm=true",  # the organism's PRM stage and its report row
             "reranker.heldout_share=0.25",  # 2 of the 8 questions: the reranker's fitting set
             "eval.pool.batch_size=2",  # four batches: the first ones' metrics are exported while the last run
             "ensemble.refine_samples=2",  # a second, sampled rewrite per refiner: candidates beyond the paper's
             *[f"{m}.{key}" for m in ("orm", "sorm", "global_refiner", "local_refiner")
               for key in ("steps=4", "warmup_steps=1", "checkpoint_every=2")]]


def as_sets(overrides: list[str]) -> list[str]:
    """`--set` arguments for the CLI."""
    return [a for o in overrides for a in ("--set", o)]
