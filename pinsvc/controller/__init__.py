"""The Kubernetes-native controller (`pinsvc-controller`): watches PinnedImageSets,
MachineConfigPools, Nodes and MachineConfigNodes, brings each node's agent to the union of
its pools' sets with the coordinator's rollout rules, and writes MachineConfigNode and pool
status. See docs/controller.md.

Modules: `kubeapi` (the only one that talks to the API server), `leader` (the Lease),
`cache` (the informers and the models they keep), `reconciler` (the loop), `desired` and
`status` (pure decisions and documents), `writer` (MachineConfigNode writes), `pools` (pool
status), `agents` (calls to the node agents), `probes` (/healthz, /readyz, /metrics),
`events`, `settings`, `cli`.
"""
