"""Cluster mode: the node's roles on several hosts, jobs carried by Celery on RabbitMQ.

PostgreSQL stays the record of every state; RabbitMQ only carries work. A job row is
committed first and its task published after (``process.queue.publish_on_commit``), on one
durable queue per model, so a GPU host consumes only the models it holds
(:mod:`~dicom_node.cluster.queues`). Tasks are acknowledged late and rejected when their
worker dies, so a SIGKILLed worker's task is delivered again; the claim in the database
(``process.queue.claim_job``) makes every message after the first a no-op, and takes over a
job whose worker stopped sending heartbeats (:mod:`~dicom_node.cluster.members`). The sweep
(:mod:`~dicom_node.cluster.sweep`) requeues what no live worker holds and republishes
queued jobs whose messages no broker holds. Each role process can serve its own
``/healthz`` and ``/metrics`` (:mod:`~dicom_node.cluster.health`).

Nothing here runs in the embedded mode (one ``serve``, no broker).
"""
