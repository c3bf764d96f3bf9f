"""Running a federation: the embedded local deployment (``fedsilo up`` / ``down``)."""

from fedsilo.runtime._local import ProcessInfo, down, processes, up
from fedsilo.runtime._ports import free_port_block

__all__ = ["ProcessInfo", "down", "free_port_block", "processes", "up"]
