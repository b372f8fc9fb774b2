"""Kubernetes: pod configuration per step and dagster-k8s's k8s_job_executor with it as defaults."""
