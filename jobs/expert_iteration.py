"""Ray job: every expert-iteration round: samples (Ray Data + engines), the next SFT rows, policy training.
Every earlier stage must be done in the run directory; a finished stage is skipped.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python jobs/expert_iteration.py --config cluster/configs/tiny-cpu.yaml --out <run directory>
"""

from glore_ray.cli import job_main

if __name__ == "__main__":
    job_main("pipeline", "--only", "expert_iteration")
