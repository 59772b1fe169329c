"""The gateway's operations over one embedding model's collection.

A gateway embeds with one model or more (its default one, and the models it can move a
tenant's faces to); each gets its own set of operations, and a call uses the set of the
tenant's model in use (gateway/tenant_models.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.clusters import Clusters
from gateway.dependencies import Dependencies
from gateway.indexing import Indexer
from gateway.matching import Matcher
from gateway.people import People
from gateway.people_edits import PeopleEdits
from gateway.progress import IndexingProgress


@dataclass
class Operations:
    deps: Dependencies
    people: People
    indexer: Indexer
    matcher: Matcher
    clusters: Clusters
    edits: PeopleEdits

    @classmethod
    def over(cls, deps: Dependencies, progress: IndexingProgress) -> Operations:
        """The operations of ``deps``' model; indexing progress is counted in ``progress``,
        whichever model the photos go to."""
        people = People(deps)
        clusters = Clusters(deps)
        return cls(
            deps=deps,
            people=people,
            indexer=Indexer(deps, progress),
            matcher=Matcher(deps, people),
            clusters=clusters,
            edits=PeopleEdits(deps, people, clusters),
        )
