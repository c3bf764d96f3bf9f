"""Provisioning: making a federation's CA, its certificates and its participants' kits.

``provision`` turns a federation spec into a workspace with a CA and one kit per
participant. Enrollment (a participant makes its keys on its own machine and sends
certificate signing requests), the CA's signing of those requests and the renewal of a
kit's certificates live here too. Provisioning writes what :mod:`fedsilo.config` reads,
and writes each silo's approval policy and each submitter's code-signing key, so it sits
above :mod:`fedsilo.config`, :mod:`fedsilo.approval` and :mod:`fedsilo.jobs`.
"""

from fedsilo.provisioning._provision import provision

__all__ = ["provision"]
