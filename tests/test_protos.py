"""The API definition: generated code is fresh and the protos follow the house style."""

from __future__ import annotations

import filecmp

from facesearch.v1 import common_pb2, detector_pb2, facesearch_pb2, search_pb2
from scripts.generate_protos import OUTPUT_ROOT, generate


def test_generated_code_is_up_to_date(tmp_path):
    generate(tmp_path)
    fresh, committed = tmp_path / "facesearch", OUTPUT_ROOT / "facesearch"
    fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    committed_files = sorted(
        p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh_files == committed_files, "run `make protos` and commit the result"
    stale = [str(p) for p in fresh_files if not filecmp.cmp(fresh / p, committed / p, shallow=False)]
    assert not stale, f"stale generated files {stale}: run `make protos` and commit the result"


def methods(module, service: str) -> set[str]:
    return {m.name for m in module.DESCRIPTOR.services_by_name[service].methods}


def test_the_v1_api_has_every_service_and_rpc():
    assert methods(detector_pb2, "Detector") == {"Detect", "DetectBatch"}
    assert methods(search_pb2, "Search") == {
        "Upsert",
        "Query",
        "Delete",
        "Count",
        "Scroll",
        "GetTenantModel",
        "SetTenantModel",
    }
    assert methods(facesearch_pb2, "FaceSearch") == {
        "Enroll",
        "IndexPhotos",
        "Verify",
        "Identify",
        "FindMe",
        "DeletePerson",
        "DeletePhoto",
        "ListPeople",
        "ClusterFaces",
        "StartClustering",
        "GetClusteringStatus",
        "NameCluster",
        "RenamePerson",
        "MergePeople",
        "AssignFace",
        "RejectFace",
        "HidePerson",
        "ListPersonFaces",
        "Stats",
        "ListModels",
        "ListMigrationPhotos",
        "MigratePhotos",
        "SwitchModel",
        "DropModel",
    }
    assert {"Image", "BoundingBox", "Landmarks", "Face", "FaceQuality", "Embedding", "EmbeddingModel"} <= set(
        common_pb2.DESCRIPTOR.message_types_by_name
    )


def test_every_rpc_has_its_own_request_and_response_and_enums_start_unspecified():
    for module in (detector_pb2, search_pb2, facesearch_pb2):
        assert module.DESCRIPTOR.package == "facesearch.v1"
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert method.input_type.name == f"{method.name}Request", method.full_name
                assert method.output_type.name == f"{method.name}Response", method.full_name
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            zero = enum.values_by_number[0].name
            assert zero.endswith("_UNSPECIFIED"), f"{enum.name}: zero value {zero}"
