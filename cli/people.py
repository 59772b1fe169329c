"""`facesearch cluster`, `clusters`, `name`, `rename`, `merge`, `move`, `not`, `hide`,
`faces`: clusters and people, through the gateway."""

from __future__ import annotations

import argparse
import sys

from cli.archive import person_id_of
from cli.exit_status import EXIT_OK
from facesearch.v1 import facesearch_pb2
from sdk.client import FaceSearchClient

STATES = {
    facesearch_pb2.CLUSTERING_STATE_UNSPECIFIED: "no run yet",
    facesearch_pb2.CLUSTERING_STATE_RUNNING: "running",
    facesearch_pb2.CLUSTERING_STATE_DONE: "done",
    facesearch_pb2.CLUSTERING_STATE_FAILED: "failed",
}


def status_line(status: facesearch_pb2.ClusteringStatus) -> str:
    line = f"clustering {STATES[status.state]}: {status.faces_done} of {status.faces_to_do} faces"
    if status.state == facesearch_pb2.CLUSTERING_STATE_DONE:
        line += (
            f", {status.clustered_faces} in clusters, {status.unclustered_faces} not; "
            f"{status.clusters} clusters ({status.seconds:.1f} s)"
        )
    if status.error:
        line += f": {status.error}"
    return line


def cluster(client: FaceSearchClient, args: argparse.Namespace) -> int:
    status = client.start_clustering(full=args.full)
    if not args.wait:
        print(status_line(status))
        return EXIT_OK
    status = client.wait_for_clustering(timeout_s=args.timeout)
    print(status_line(status))
    return EXIT_OK if status.state == facesearch_pb2.CLUSTERING_STATE_DONE else 1


def clusters(client: FaceSearchClient, args: argparse.Namespace) -> int:
    found = client.cluster_faces(min_cluster_size=args.min_size, include_named=args.named, faces_per_cluster=5)
    for c in found:
        name = f"  {c.display_name} ({c.person_id})" if c.person_id else ""
        faces = ", ".join(f"{f.photo_id}#{f.face_index}" for f in c.faces)
        print(f"{c.cluster_id}  {c.face_count} face(s){name}: {faces}{' ...' if c.face_count > len(c.faces) else ''}")
    print(f"{len(found)} cluster(s); {status_line(client.clustering_status())}", file=sys.stderr)
    return EXIT_OK


def _person(person: facesearch_pb2.Person) -> str:
    hidden = ", hidden" if person.hidden else ""
    return (
        f"{person.person_id}  {person.display_name}  ({person.reference_faces} reference face(s), "
        f"{person.archive_faces} in the archive{hidden})"
    )


def name(client: FaceSearchClient, args: argparse.Namespace) -> int:
    person_id = person_id_of(client, args.person) if args.person else ""
    print(_person(client.name_cluster(args.cluster_id, args.name or "", person_id=person_id)))
    return EXIT_OK


def rename(client: FaceSearchClient, args: argparse.Namespace) -> int:
    print(_person(client.rename_person(person_id_of(client, args.person), args.name)))
    return EXIT_OK


def merge(client: FaceSearchClient, args: argparse.Namespace) -> int:
    merged = [person_id_of(client, p) for p in args.others]
    print(_person(client.merge_people(person_id_of(client, args.person), merged)))
    return EXIT_OK


def move(client: FaceSearchClient, args: argparse.Namespace) -> int:
    person_id = person_id_of(client, args.person) if args.person else ""
    reply = client.assign_face(args.face_id, person_id)
    print(f"{reply.face.photo_id}#{reply.face.face_index}: {reply.person_id or 'nobody'}")
    return EXIT_OK


def not_this_person(client: FaceSearchClient, args: argparse.Namespace) -> int:
    face = client.reject_face(args.face_id, person_id_of(client, args.person))
    print(f"{face.photo_id}#{face.face_index} is not {args.person}")
    return EXIT_OK


def hide(client: FaceSearchClient, args: argparse.Namespace) -> int:
    print(_person(client.hide_person(person_id_of(client, args.person), hidden=not args.show)))
    return EXIT_OK


def faces(client: FaceSearchClient, args: argparse.Namespace) -> int:
    for face in client.person_faces(person_id_of(client, args.person)):
        kind = "reference" if face.reference else "archive"
        print(f"{face.face_id}  {kind}  {face.photo_id}#{face.face_index}  {face.photo_uri}")
    return EXIT_OK
