"""Operator and developer tools built on the product: the local cluster launcher
(`localcluster`, `launch`), operator HTTP (`opshttp`), `status`, `ops` (add/remove a node),
`demo` (`pmcluster up`), `loadgen`, `soak`, `fuzz`, the history recorder and checker
(`history`) and `bench`. Nothing below this layer imports it.
"""
