"""Development environment: real peers (registry, CRI-O, crictl) and test images."""
