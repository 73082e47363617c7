"""Fault injection against the real service's processes: break one thing, lose no job."""
