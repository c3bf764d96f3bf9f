"""Running a federation: the embedded local deployment (``fedsilo up`` / ``down``)."""

from fedsilo.runtime._local import ProcessInfo, down, processes, up

__all__ = ["ProcessInfo", "down", "processes", "up"]
