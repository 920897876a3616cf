"""File formats plsc writes and reads (below nn / interop / engine: imports nothing of them)."""
