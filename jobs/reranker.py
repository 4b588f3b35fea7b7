"""Ray job: fit the likelihood reranker's weights (`reranker.likelihood`) on the ORM's training rows.
Every earlier stage must be done in the run directory; a finished stage is skipped.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python jobs/reranker.py --config cluster/configs/organism-benchmark.yaml --out <run directory>
"""

from glore_ray.cli import job_main

if __name__ == "__main__":
    job_main("pipeline", "--only", "reranker")
