"""The HTTP API process (FastAPI): thin routes over a service layer; no torch."""
