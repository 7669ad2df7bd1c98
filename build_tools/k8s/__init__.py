"""Kubernetes: manifests from the spec (manifests.py), their offline validation (validate.py), files on
disk and the drift check (writer.py), the capacity plan and autoscaling simulation (capacity.py), and
the `triton-repo k8s|capacity` commands (cli.py). docs/kubernetes.md."""
