"""pinsvc: pre-pull and pin container images on Kubernetes nodes."""
