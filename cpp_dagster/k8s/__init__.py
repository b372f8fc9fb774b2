"""Kubernetes: per-analysis pod configuration and the k8s executor that applies it."""
