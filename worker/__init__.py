"""The Celery worker processes: thin tasks over the generation engine and webhook delivery."""
