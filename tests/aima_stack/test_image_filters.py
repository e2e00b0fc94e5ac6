"""Unit tests of aima_stack's image filter (filter_plugins/aima_images.py): which archives
tasks/images.yml sends and loads, from one docker_image_info result."""

from __future__ import annotations

from tests.conftest import load_filter_plugin

f = load_filter_plugin("aima_stack", "aima_images")

ARCHIVES = [
    {"name": "aima-testbed/postgres:trixie", "path": "/a/postgres.tar"},
    {"name": "redis", "path": "/a/redis.tar"},
    {"name": "docker.io/library/caddy:2", "path": "/a/caddy.tar"},
    {"name": "registry.example:5000/team/backend", "path": "/a/backend.tar"},
    {"name": "ghcr.example/worker@sha256:" + "a" * 64, "path": "/a/worker.tar"},
]


def image(tags=(), digests=(), image_id="sha256:" + "0" * 64):
    return {"Id": image_id, "RepoTags": list(tags), "RepoDigests": list(digests)}


def names(archives):
    return [archive["name"] for archive in archives]


def test_nothing_on_the_host_means_every_archive():
    assert f.aima_archives_missing(ARCHIVES, []) == ARCHIVES
    assert f.aima_archives_missing(ARCHIVES, None) == ARCHIVES


def test_every_image_present_means_no_archive():
    images = [
        image(["aima-testbed/postgres:trixie"]),
        image(["redis:latest"]),
        image(["caddy:2"]),  # Docker lists docker.io/library/caddy:2 so
        image(["registry.example:5000/team/backend:latest"]),
        image([], ["ghcr.example/worker@sha256:" + "a" * 64]),
    ]
    assert f.aima_archives_missing(ARCHIVES, images) == []


def test_only_the_missing_ones_in_their_order():
    images = [image(["redis:latest"]), image(["aima-testbed/postgres:other"])]
    assert names(f.aima_archives_missing(ARCHIVES, images)) == [
        "aima-testbed/postgres:trixie",
        "docker.io/library/caddy:2",
        "registry.example:5000/team/backend",
        "ghcr.example/worker@sha256:" + "a" * 64,
    ]


def test_a_registry_port_is_not_a_tag():
    images = [image(["registry.example:5000/team/backend:v2"])]
    assert "registry.example:5000/team/backend" in names(f.aima_archives_missing(ARCHIVES, images))


def test_an_image_named_by_its_id():
    image_id = "sha256:" + "b" * 64
    archives = [{"name": image_id, "path": "/a/x.tar"}]
    assert f.aima_archives_missing(archives, [image(image_id=image_id)]) == []
    assert f.aima_archives_missing(archives, [image()]) == archives
