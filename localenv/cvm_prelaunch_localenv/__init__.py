"""The embedded local environment: a real kube-apiserver and etcd, anvil, the app contract and the
Phala Cloud simulator, usable from the shell and as pytest fixtures. Not used by the operator itself."""
