"""Ray job: PRM training on the exact checker's step labels (Ray Train; model organism only).
Every earlier stage must be done in the run directory; a finished stage is skipped.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python jobs/prm.py --config cluster/configs/tiny-cpu.yaml --out <run directory>
"""

from glore_ray.cli import job_main

if __name__ == "__main__":
    job_main("pipeline", "--only", "prm")
