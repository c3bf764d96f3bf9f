"""Privacy: local DP-SGD, central DP at aggregation, secure aggregation."""

from fedsilo.privacy._spec import CentralDPSpec, LocalDPSpec, PrivacySpec, SecureAggregationSpec

__all__ = ["CentralDPSpec", "LocalDPSpec", "PrivacySpec", "SecureAggregationSpec"]
