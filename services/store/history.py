"""How many deployments and builds a project keeps: the oldest unused ones go as new come.

`ak deploy` makes a build and a deployment each time, so a long-lived project makes
thousands; a token limited to one project could make them by the ten thousand (each build up
to 6 MiB of SQL), and every `ak deployment list` and the web UI's Projects page failed over
the NATS message limit. As Kubernetes keeps a Deployment's last ReplicaSets
(``revisionHistoryLimit``) and Cloud Run its last revisions, a project keeps its newest
``KEPT_DEPLOYMENTS`` deployments and ``KEPT_BUILDS`` builds: making one more removes the
oldest INACTIVE deployment (and its build, when nothing else uses it) or the oldest build no
deployment uses, never one that a session still running runs. Only when nothing can go (all
ACTIVE or DRAINING, or every build in use) is the new one refused, saying what to do.
"""

from __future__ import annotations

import logging

from akcore import wire
from akcore.errors import InvalidArgument
from sqlmodel import Session as DB
from sqlmodel import col, func, select

from .models import Build, Deployment, Project, Session

log = logging.getLogger(__name__)

KEPT_DEPLOYMENTS = 100
# More than the deployments: each deployment's build stays with it, and builds made without
# a deployment (`build.create` alone) still find room.
KEPT_BUILDS = 2 * KEPT_DEPLOYMENTS


def make_room_for_deployment(db: DB, p: Project, build_id: str) -> None:
    """Removes the project's oldest INACTIVE deployments (and builds they leave unused, but
    ``build_id``, the new deployment's) until one more fits ``KEPT_DEPLOYMENTS``; not
    committed. Raises InvalidArgument when too few are inactive."""
    count = select(func.count()).select_from(Deployment)
    excess = db.exec(count.where(Deployment.project_id == p.project_id)).one() + 1
    excess -= KEPT_DEPLOYMENTS
    if excess <= 0:
        return
    old = db.exec(
        select(Deployment)
        .where(Deployment.project_id == p.project_id, Deployment.state == "INACTIVE")
        .order_by(col(Deployment.created_us), col(Deployment.deployment_id))
    )
    running = _running(db, p.project_id) | {build_id}
    gone: list[Deployment] = []
    for d in old:
        if len(gone) == excess:
            break
        if d.deployment_id not in running:
            db.delete(d)
            gone.append(d)
    if len(gone) < excess:
        raise InvalidArgument(
            f'project "{p.name}" has {KEPT_DEPLOYMENTS} deployments, the most it keeps, and '
            "none of the older ones can go (only an INACTIVE one without running sessions "
            "is removed to make room): deactivate old deployments (`ak deployment "
            "deactivate ID`) or delete them (`ak deployment delete ID`)"
        )
    db.flush()
    for d in gone:
        _drop_unused_build(db, d.build_id, running)
    log.info(
        'project "%s": removed %d old inactive deployments (it keeps %d)',
        p.name,
        len(gone),
        KEPT_DEPLOYMENTS,
    )


def make_room_for_build(db: DB, p: Project) -> None:
    """Removes the project's oldest builds that no deployment uses and no running session
    runs until one more fits ``KEPT_BUILDS``; not committed. Raises InvalidArgument when
    too few are unused."""
    count = select(func.count()).select_from(Build)
    excess = db.exec(count.where(Build.project_id == p.project_id)).one() + 1 - KEPT_BUILDS
    if excess <= 0:
        return
    used = select(Deployment.build_id).where(Deployment.project_id == p.project_id)
    old = db.exec(
        select(Build.build_id)
        .where(Build.project_id == p.project_id, col(Build.build_id).not_in(used))
        .order_by(col(Build.created_us), col(Build.build_id))
    )
    running = _running(db, p.project_id)
    gone = 0
    for build_id in old:
        if gone == excess:
            break
        gone += _drop_unused_build(db, build_id, running)
    if gone < excess:
        raise InvalidArgument(
            f'project "{p.name}" has {KEPT_BUILDS} builds, the most it keeps, each used by a '
            "deployment or a running session: delete old deployments (`ak deployment delete "
            "ID`), then their builds go too"
        )
    log.info('project "%s": removed %d old unused builds (it keeps %d)', p.name, gone, KEPT_BUILDS)


def _drop_unused_build(db: DB, build_id: str, running: set[str]) -> int:
    """Deletes a build unless a deployment uses it or a running session runs it (a runner
    reads it again when it resumes the session); 1 when it went."""
    if build_id in running:
        return 0
    if db.exec(select(Deployment.deployment_id).where(Deployment.build_id == build_id)).first():
        return 0
    b = db.get(Build, build_id)
    if b is None:
        return 0
    db.delete(b)
    return 1


def _running(db: DB, project_id: str) -> set[str]:
    """The deployments and builds that the project's sessions not ended yet run (one query
    by the project's index: sessions are many, their deployment and build not indexed)."""
    q = select(Session.deployment_id, Session.build_id).where(
        Session.project_id == project_id, col(Session.state).not_in(wire.FINAL_STATES)
    )
    return {x for row in db.exec(q) for x in row}
