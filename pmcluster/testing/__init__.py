"""The harness for pmcluster's own tests: a throwaway Kerberos realm (`kdc`), an in-process DNS
server (`dns`, needs the dev extra's dnslib) and a TCP proxy for fault injection (`proxy`).

Imported by tests only (an import-linter contract checks that nothing in the product does).
Real ZooKeeper and node processes come from `pmcluster.tools.localcluster`, which the
operator tools share.
"""
