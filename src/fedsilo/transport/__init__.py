"""HTTPS for fedsilo's servers: mutual TLS and strict JSON, shared by the orchestrator and
each silo's approval endpoint.

:mod:`fedsilo.transport._tls` serves an app over TLS 1.3 with client certificates and hands
the caller's certificate to it; :mod:`fedsilo.transport._http` reads request bodies
strictly and renders every refusal as fedsilo's error answer. Neither server's own code is
here, so an approval endpoint loads none of the orchestrator.
"""
