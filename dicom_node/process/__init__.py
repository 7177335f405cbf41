"""Process: jobs that run a route's models on a complete series.

``queue`` is the one owner of Job rows; ``runner`` runs one job (models, result objects,
deliveries queued); ``worker`` runs jobs in worker processes, away from the C-STORE path.
"""
