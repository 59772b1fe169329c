"""The pages: a FastAPI app that renders the gateway's answers as HTML. It is a client of the
gateway's gRPC API (one ``FaceSearchClient`` with the tenant's key) and keeps nothing of its
own; photos and thumbnails are read from their URIs inside the archive roots (``web.media``).

Pages: ``/`` (counts, clustering progress, find me by a selfie or a person), ``/findme``
(the photos found, best first, paged, the face boxed), ``/people`` (rename, hide, merge),
``/people/{id}`` (their faces; "not this person"), ``/clusters`` and ``/clusters/{id}``
(review: name it, leaving out the faces that are not them), ``/photo`` (a photo's faces and
who they are), ``/findme/people`` (the photos with all, or any, of several people).
``/media/photo``, ``/media/view`` and ``/media/face`` send the pixels; ``/progress`` and
``/api/status`` are the JSON the home page's script polls.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import grpc
import prometheus_client
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from facesearch.v1 import facesearch_pb2
from sdk.client import FaceSearchError
from web import media

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 24
CLUSTER_FACES = 60
THUMBNAIL_SIZES = (96, 160, 240)
VIEW_WIDTHS = (480, 960, 1600)
STATES = {
    facesearch_pb2.CLUSTERING_STATE_UNSPECIFIED: "no run yet",
    facesearch_pb2.CLUSTERING_STATE_RUNNING: "running",
    facesearch_pb2.CLUSTERING_STATE_DONE: "done",
    facesearch_pb2.CLUSTERING_STATE_FAILED: "failed",
}
# Every page and its script and style come from here: no font, script or style from elsewhere.
SECURITY_HEADERS = {
    # Inline style attributes place the face boxes; no inline script or style element is allowed.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "style-src-attr 'unsafe-inline'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class PageError(Exception):
    """What the page tells the person, with its HTTP status."""

    def __init__(self, status: int, message: str, *, page: str = "error.html", context: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.page = page
        self.context = context or {}


def gateway_error(error: FaceSearchError, what: str = "") -> PageError:
    """The page's answer to the gateway's status."""
    code, message = error.code, error.message
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if "no face" in message:
            return PageError(422, f"No face found{what}: use a photo where the face is clear, facing the camera.")
        return PageError(400, f"The gateway refused the request{what}: {message}")
    if code == grpc.StatusCode.NOT_FOUND:
        return PageError(404, f"Not found: {message}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PageError(403, "The web app's API key may only read: changes need a key with write access.")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return PageError(502, "The gateway does not accept the web app's API key.")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PageError(503, "The gateway is busy: try again in a moment.")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PageError(504, "The gateway took too long to answer: try again.")
    return PageError(503, f"The gateway cannot answer now ({code.name.lower()}): {message}")


def box_of(value: str) -> tuple[float, float, float, float]:
    try:
        x_min, y_min, x_max, y_max = (float(part) for part in value.split(","))
    except ValueError:
        raise PageError(400, "box: four numbers x_min,y_min,x_max,y_max") from None
    if not (0 <= x_min < x_max and 0 <= y_min < y_max):
        raise PageError(400, "box: an empty or negative box")
    return x_min, y_min, x_max, y_max


def when(stamp: Any) -> str:
    """A protobuf Timestamp as the pages show it."""
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")


def plural(count: int, word: str, many: str = "") -> str:
    return f"{count} {word if count == 1 else many or word + 's'}"


def indexing_json(indexing: facesearch_pb2.IndexingProgress) -> dict:
    """The gateway's indexing progress (``StatsResponse.indexing``), with the sentence the home page shows."""
    run = indexing.run
    last = when(indexing.last_photo_at) if indexing.HasField("last_photo_at") else None
    if indexing.streams_open:
        summary = (
            f"Indexing: {plural(indexing.streams_open, 'stream')}, {run.photos_done} of "
            f"{plural(run.photos_received, 'photo')} received done ({run.photos_failed} failed, "
            f"{plural(run.photos_duplicate, 'duplicate')}, {run.photos_no_face} without a face), "
            f"{indexing.photos_per_second:.1f} photos/s"
        ) + (f", last at {last}" if last else "")
    elif last:
        summary = f"No indexing running; last finished {last} ({plural(run.photos_done, 'photo')} in the last run)."
    else:
        summary = "No indexing running; none since the gateway started."
    return {
        "streams_open": indexing.streams_open,
        "photos_received": run.photos_received,
        "photos_done": run.photos_done,
        "photos_failed": run.photos_failed,
        "photos_duplicate": run.photos_duplicate,
        "photos_no_face": run.photos_no_face,
        "faces_stored": run.faces_stored,
        "photos_per_second": round(indexing.photos_per_second, 2),
        "last_photo_at": indexing.last_photo_at.ToJsonString() if last else None,
        "total_photos_done": indexing.total.photos_done,
        "summary": summary,
    }


def create_app(
    client: Any,
    roots: Sequence[str | Path],
    *,
    max_upload_bytes: int = 15 * 1024 * 1024,
    cache_max_age_s: int = 3600,
    s3_roots: Sequence[str] = (),
    s3_client: Callable[[], Any] = media.s3_client,
) -> FastAPI:
    """The app, calling the gateway through ``client`` (a ``sdk.client.FaceSearchClient``);
    photos are read from the folders ``roots`` and the ``s3://bucket/prefix`` ``s3_roots``
    (with the boto3 client that ``s3_client`` makes when a photo is first read from a bucket)."""
    archive = media.Archive(media.archive_roots(roots), media.bucket_roots(s3_roots), s3_client)
    app = FastAPI(title="facesearch", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")

    def view_url(uri: str, width: int = 480) -> str:
        return "/media/view?" + urlencode({"uri": uri, "w": width})

    def face_url(face: Any, size: int = 160) -> str:
        box = face.box
        where = f"{box.x_min:.1f},{box.y_min:.1f},{box.x_max:.1f},{box.y_max:.1f}"
        return "/media/face?" + urlencode({"uri": face.photo_uri, "box": where, "s": size})

    def photo_url(photo_id: str, uri: str) -> str:
        return "/photo?" + urlencode({"id": photo_id, "uri": uri})

    def box_style(uri: str, box: Any) -> str | None:
        """The CSS placing a face's box over its photo, in percent; None when it cannot be shown."""
        try:
            width, height = media.photo_size(archive.resolve(uri))
        except media.Refused:
            return None
        return (
            f"left:{100 * box.x_min / width:.2f}%;top:{100 * box.y_min / height:.2f}%;"
            f"width:{100 * (box.x_max - box.x_min) / width:.2f}%;height:{100 * (box.y_max - box.y_min) / height:.2f}%"
        )

    def servable(uri: str) -> str | None:
        """Why the photo at ``uri`` is not shown; None when it is."""
        try:
            archive.resolve(uri)
        except media.Refused as refused:
            return refused.message
        return None

    templates.env.globals.update(
        view_url=view_url, face_url=face_url, photo_url=photo_url, box_style=box_style, servable=servable
    )

    def render(request: Request, page: str, status: int = 200, **context: Any) -> HTMLResponse:
        response = templates.TemplateResponse(request, page, context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def call(method: Callable, *args: Any, what: str = "", page: str = "error.html", **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except FaceSearchError as error:
            failure = gateway_error(error, what)
            failure.page = page
            raise failure from None

    @app.exception_handler(PageError)
    async def page_error(request: Request, error: PageError) -> HTMLResponse:
        if error.page == "home.html":
            context = {**await run_in_threadpool(home_context), **error.context}
        else:
            context = error.context
        return render(request, error.page, error.status, error=error.message, **context)

    @app.exception_handler(media.Refused)
    async def refused(_request: Request, error: media.Refused) -> Response:
        return Response(error.message, status_code=error.status, media_type="text/plain", headers=SECURITY_HEADERS)

    def status_json(stats: Any = None) -> dict:
        stats = stats or call(client.stats)
        status = call(client.clustering_status)
        return {
            "photos": stats.photos,
            "faces": stats.faces,
            "people": stats.people,
            "clustering": STATES[status.state],
            "faces_to_do": status.faces_to_do,
            "faces_done": status.faces_done,
            "clusters": status.clusters,
            "clustering_error": status.error,
        }

    def progress_json() -> dict:
        return indexing_json(call(client.stats).indexing)

    def home_context() -> dict:
        try:
            stats = call(client.stats)
            counts, indexing = status_json(stats), indexing_json(stats.indexing)
        except PageError as error:
            counts, indexing = {"unavailable": error.message}, None
        try:
            people = call(client.list_people)
        except PageError:
            people = []
        return {"counts": counts, "indexing": indexing, "people": people}

    # --- pages ------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request) -> HTMLResponse:
        return render(request, "home.html", **home_context())

    @app.get("/api/status")
    def api_status() -> JSONResponse:
        return JSONResponse(status_json(), headers={"Cache-Control": "no-store"})

    @app.get("/progress")
    def progress() -> JSONResponse:
        return JSONResponse(progress_json(), headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok", media_type="text/plain")

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    @app.get("/findme", response_class=HTMLResponse)
    def find_person(request: Request, person: str = "", page: str = "") -> HTMLResponse:
        if not person:
            raise PageError(400, "Pick a person, or upload a photo of yourself.", page="home.html")
        reply = call(client.find_me, person_id=person, limit=PAGE_SIZE, page_token=page)
        names = {p.person_id: p.display_name for p in call(client.list_people, include_hidden=True)}
        return render(
            request,
            "results.html",
            matches=reply.matches,
            settings=reply.settings,
            title=names.get(person, person),
            person=person,
            next_page=reply.next_page_token,
            first=not page,
            selfie="",
        )

    @app.get("/findme/people", response_class=HTMLResponse)
    def find_people(
        request: Request, person: Annotated[list[str] | None, Query()] = None, match: str = "all", page: str = ""
    ) -> HTMLResponse:
        chosen = list(dict.fromkeys(p for p in person or () if p))
        if len(chosen) < 2:
            raise PageError(400, "Tick two people or more to find the photos with them.", page="home.html")
        if match not in ("all", "any"):
            raise PageError(400, "match: all or any", page="home.html")
        reply = call(
            client.find_people, chosen, match_all=match == "all", limit=PAGE_SIZE, page_token=page, page="home.html"
        )
        names = {p.person_id: p.display_name or p.person_id for p in call(client.list_people, include_hidden=True)}
        shown = [names.get(p, p) for p in chosen]
        title = ", ".join(shown[:-1]) + (" and " if match == "all" else " or ") + shown[-1]
        query = [("person", p) for p in chosen] + [("match", match)]
        return render(
            request,
            "results.html",
            matches=reply.matches,
            settings=reply.settings,
            title=title,
            person="",
            names=names,
            first_url="/findme/people?" + urlencode(query),
            next_url="/findme/people?" + urlencode([*query, ("page", reply.next_page_token)]),
            next_page=reply.next_page_token,
            first=not page,
            selfie="",
        )

    @app.post("/findme", response_class=HTMLResponse)
    async def find_me(request: Request) -> HTMLResponse:
        length = request.headers.get("content-length")
        # A selfie sent again for the next page travels as base64: a third larger.
        if length and length.isdigit() and int(length) > max_upload_bytes * 4 // 3 + 65536:
            raise PageError(413, too_large(), page="home.html")
        form = await request.form(max_files=1, max_fields=4, max_part_size=max_upload_bytes * 4 // 3 + 1024)
        token = str(form.get("page") or "")
        upload = form.get("selfie")
        if isinstance(upload, str) or upload is None:
            try:
                content = base64.b64decode(str(form.get("selfie_b64") or ""), validate=True)
            except binascii.Error:
                raise PageError(400, "The photo sent back was damaged: upload it again.", page="home.html") from None
        else:
            content = await upload.read(max_upload_bytes + 1)
        check_upload(content)
        reply = await run_in_threadpool(
            call, client.find_me, [content], limit=PAGE_SIZE, page_token=token, what=" in your photo", page="home.html"
        )
        return render(
            request,
            "results.html",
            matches=reply.matches,
            settings=reply.settings,
            title="you",
            person="",
            next_page=reply.next_page_token,
            first=not token,
            selfie=base64.b64encode(content).decode() if reply.next_page_token else "",
        )

    def too_large() -> str:
        return f"The photo is too large: at most {max_upload_bytes / 1024 / 1024:g} MB."

    def check_upload(content: bytes) -> None:
        if not content:
            raise PageError(400, "Choose a photo of yourself first.", page="home.html")
        if len(content) > max_upload_bytes:
            raise PageError(413, too_large(), page="home.html")
        try:
            Image.open(io.BytesIO(content)).close()
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            raise PageError(
                415, "That file is not a photo: upload a JPEG, PNG or WebP image.", page="home.html"
            ) from None

    @app.get("/people", response_class=HTMLResponse)
    def people(request: Request, hidden: bool = False) -> HTMLResponse:
        listed = call(client.list_people, include_hidden=hidden)
        return render(request, "people.html", people=listed, show_hidden=hidden)

    def person_of(person_id: str) -> Any:
        people = call(client.list_people, include_hidden=True)
        return found(people, "person_id", person_id, f"No person {person_id!r}.")

    @app.get("/people/{person_id}", response_class=HTMLResponse)
    def person_page(request: Request, person_id: str) -> HTMLResponse:
        person = person_of(person_id)
        faces = call(client.person_faces, person_id)
        return render(
            request,
            "person.html",
            person=person,
            references=[f for f in faces if f.reference],
            faces=[f for f in faces if not f.reference],
        )

    @app.post("/people/{person_id}/rename")
    async def rename(request: Request, person_id: str) -> Response:
        form = await request.form()
        name = str(form.get("name") or "").strip()
        if not name:
            raise PageError(400, "Give the person a name.")
        await run_in_threadpool(call, client.rename_person, person_id, name)
        return back(form, "/people")

    @app.post("/people/{person_id}/hide")
    async def hide(request: Request, person_id: str) -> Response:
        form = await request.form()
        await run_in_threadpool(call, client.hide_person, person_id, form.get("hidden") != "false")
        return back(form, "/people")

    @app.post("/people/merge")
    async def merge(request: Request) -> Response:
        form = await request.form()
        into = str(form.get("into") or "")
        others = [str(p) for p in form.getlist("person") if p and p != into]
        if not into or not others:
            raise PageError(400, "Tick the people to merge and choose the one they are merged into.")
        await run_in_threadpool(call, client.merge_people, into, others)
        return RedirectResponse(f"/people/{into}", status_code=303)

    @app.post("/faces/{face_id}/not")
    async def not_this_person(request: Request, face_id: str) -> Response:
        form = await request.form()
        person_id = str(form.get("person") or "")
        if not person_id:
            raise PageError(400, "Whom is this face not?")
        await run_in_threadpool(call, client.reject_face, face_id, person_id)
        return back(form, f"/people/{person_id}")

    @app.get("/clusters", response_class=HTMLResponse)
    def clusters(request: Request, named: bool = False) -> HTMLResponse:
        listed = call(client.cluster_faces, include_named=named, faces_per_cluster=6)
        status = call(client.clustering_status)
        return render(
            request, "clusters.html", clusters=listed, named=named, clustering=status, state=STATES[status.state]
        )

    @app.post("/clusters/run")
    async def run_clustering(request: Request) -> Response:
        form = await request.form()
        await run_in_threadpool(call, client.start_clustering, full=form.get("full") == "true")
        return RedirectResponse("/clusters", status_code=303)

    def cluster_of(cluster_id: str) -> Any:
        listed = call(client.cluster_faces, include_named=True, min_cluster_size=1, faces_per_cluster=CLUSTER_FACES)
        return found(
            listed, "cluster_id", cluster_id, f"No cluster {cluster_id!r}: a clustering run may have changed it."
        )

    @app.get("/clusters/{cluster_id}", response_class=HTMLResponse)
    def cluster_page(request: Request, cluster_id: str) -> HTMLResponse:
        cluster = cluster_of(cluster_id)
        return render(request, "cluster.html", cluster=cluster, people=call(client.list_people))

    @app.post("/clusters/{cluster_id}/name")
    async def name_cluster(request: Request, cluster_id: str) -> Response:
        form = await request.form()
        name = str(form.get("name") or "").strip()
        existing = str(form.get("person") or "")
        if not name and not existing:
            raise PageError(400, "Give the cluster a name, or choose who it is.")
        person = await run_in_threadpool(call, client.name_cluster, cluster_id, name, person_id=existing)
        kept = set(map(str, form.getlist("keep")))
        for face_id in [str(f) for f in form.getlist("face") if str(f) not in kept]:  # unticked: not them
            await run_in_threadpool(call, client.reject_face, face_id, person.person_id)
        return RedirectResponse(f"/people/{person.person_id}", status_code=303)

    @app.get("/photo", response_class=HTMLResponse)
    def photo_page(request: Request, uri: str, id: str = "") -> HTMLResponse:
        photo = archive.resolve(uri)
        try:
            faces = client.identify(photo.read(), top_k=3).faces
            note = ""
        except FaceSearchError as error:
            if error.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise gateway_error(error) from None
            faces, note = [], "No face found in this photo."
        return render(request, "photo.html", uri=uri, photo_id=id or uri, faces=faces, note=note)

    # --- pixels -----------------------------------------------------------------------------

    def cached(request: Request, photo: media.Photo, variant: str, make: Callable[[], Response]) -> Response:
        etag = f'"{photo.etag}-{hashlib.sha256(variant.encode()).hexdigest()[:12]}"'
        headers = {
            "Cache-Control": f"private, max-age={cache_max_age_s}",
            "ETag": etag,
            "X-Content-Type-Options": "nosniff",
        }
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        response = make()
        response.headers.update(headers)
        return response

    @app.get("/media/photo")
    def photo_file(request: Request, uri: str) -> Response:
        photo = archive.resolve(uri)
        if isinstance(photo, media.BucketPhoto):
            return cached(request, photo, "file", lambda: object_response(photo))
        kind = media.content_type(photo)
        if kind is None:  # not a format browsers show, or turned by its EXIF orientation
            return cached(request, photo, "upright", lambda: jpeg_response(media.resized(photo, media.MAX_SIDE)))
        return cached(request, photo, "file", lambda: FileResponse(photo.path, media_type=kind))

    def object_response(photo: media.BucketPhoto) -> Response:
        """The object streamed from the bucket as it is, or an upright JPEG copy (as a file's)."""
        sent = media.object_stream(photo)
        if sent is None:
            return jpeg_response(media.resized(photo, media.MAX_SIDE))
        kind, chunks = sent
        return StreamingResponse(chunks, media_type=kind, headers={"Content-Length": str(photo.size)})

    @app.get("/media/view")
    def photo_view(request: Request, uri: str, w: int = 480) -> Response:
        if w not in VIEW_WIDTHS:
            raise PageError(400, f"w: one of {', '.join(map(str, VIEW_WIDTHS))}")
        photo = archive.resolve(uri)
        return cached(request, photo, f"w{w}", lambda: jpeg_response(media.resized(photo, w)))

    @app.get("/media/face")
    def face_thumbnail(request: Request, uri: str, box: str, s: int = 160) -> Response:
        if s not in THUMBNAIL_SIZES:
            raise PageError(400, f"s: one of {', '.join(map(str, THUMBNAIL_SIZES))}")
        where = box_of(box)
        photo = archive.resolve(uri)
        return cached(request, photo, f"f{box}-{s}", lambda: jpeg_response(media.face(photo, where, s)))

    return app


def found(items: Sequence[Any], field: str, wanted: str, missing: str) -> Any:
    """The item whose ``field`` is ``wanted``; a 404 page saying ``missing`` when none is."""
    for item in items:
        if getattr(item, field) == wanted:
            return item
    raise PageError(404, missing)


def jpeg_response(content: bytes) -> Response:
    return Response(content, media_type="image/jpeg")


def back(form: Any, default: str) -> RedirectResponse:
    """Back to the page the form was on (a path of this site only), else ``default``."""
    target = str(form.get("back") or "")
    if not target.startswith("/") or target[1:2] in ("/", "\\"):  # browsers read /\ as //
        target = default
    return RedirectResponse(target, status_code=303)
