"""The quickstart: a real 3-silo federation on this machine in one command."""

from fedsilo.quickstart._quickstart import QuickstartResult, run_quickstart

__all__ = ["QuickstartResult", "run_quickstart"]
