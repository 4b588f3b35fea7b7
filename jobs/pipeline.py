"""Ray job: the whole GLoRe pipeline, from data to the evaluation report (finished stages are
skipped, an interrupted one resumes).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python jobs/pipeline.py --config cluster/configs/tiny-cpu.yaml --out <run directory>
"""

from glore_ray.cli import job_main

if __name__ == "__main__":
    job_main("pipeline")
