"""Queue names: one durable queue per model (or set of models), one for forward-only routes.

A route's job runs every model of the route in one worker, so its queue is named after the
sorted set of its models: ``<prefix>.model.chest-xray-pneumonia`` for the usual
one-model route, ``<prefix>.model.a+b`` for a route with two. A worker started with
``--models`` consumes the queue of every route whose models it holds all of, plus the
forward queue (forwarding needs no model).
"""

from __future__ import annotations

from collections.abc import Iterable

from dicom_node.config import Route, Settings


def model_queue(settings: Settings, model_ids: Iterable[str]) -> str:
    """The queue of jobs that need exactly these models."""
    return f"{settings.cluster.queue_prefix}.model.{'+'.join(sorted(set(model_ids)))}"


def forward_queue(settings: Settings) -> str:
    return f"{settings.cluster.queue_prefix}.forward"


def delivery_queue(settings: Settings) -> str:
    """The dispatchers' wake-up queue: a message says that a job queued deliveries
    (``cluster.broker.DeliveryBell``)."""
    return f"{settings.cluster.queue_prefix}.delivery"


def route_queue(settings: Settings, route: Route) -> str:
    return model_queue(settings, route.models) if route.models else forward_queue(settings)


def job_queue(settings: Settings, route_name: str) -> str:
    """The queue of a job of ``route_name``; a route no longer configured goes to the
    forward queue, where any worker fails it with the reason (route not configured)."""
    try:
        return route_queue(settings, settings.route(route_name))
    except KeyError:
        return forward_queue(settings)


def worker_queues(settings: Settings, model_ids: Iterable[str]) -> list[str]:
    """The queues a worker holding ``model_ids`` consumes."""
    held = set(model_ids)
    names = {model_queue(settings, [m]) for m in held}
    names |= {route_queue(settings, r) for r in settings.routes if set(r.models) <= held}
    names.add(forward_queue(settings))
    return sorted(names)


def all_queues(settings: Settings) -> list[str]:
    """The queues of every configured route (what /metrics reports)."""
    return sorted({route_queue(settings, r) for r in settings.routes} | {forward_queue(settings)})
