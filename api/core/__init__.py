"""The service core: settings, database, storage, queue sender, job state machine and service errors.

Both the HTTP control plane (``api.routes``, ``api.services``) and the Celery ``worker`` import it; it
imports neither of them, nor FastAPI, nor torch.
"""
