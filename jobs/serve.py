"""Ray job: the refinement ensemble on Ray Serve, over a finished run's models, until the job is
stopped (`ray job stop` sends SIGTERM, which deletes the app).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python jobs/serve.py --config cluster/configs/tiny-cpu.yaml --models <run directory>
"""

from glore_ray.cli import job_main

if __name__ == "__main__":
    job_main("serve")
