"""The console's vendored JavaScript (web/static/vendor/) matches its manifest, carries its
licences, and is all the page loads from outside our own code (nothing from a CDN)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from support import REPO_ROOT

STATIC = REPO_ROOT / "web" / "static"
VENDOR = STATIC / "vendor"


def manifest() -> list[dict[str, Any]]:
    packages: list[dict[str, Any]] = json.loads((VENDOR / "manifest.json").read_text())["packages"]
    return packages


def refresh_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vendor_js", REPO_ROOT / "scripts" / "vendor_js.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_vendored_file_matches_its_sha256_and_nothing_else_is_there() -> None:
    packages = manifest()
    assert {p["name"] for p in packages} == {"socket.io-client", "uplot"}
    listed = {"manifest.json"}
    for package in packages:
        folder = VENDOR / package["dir"]
        assert package["dir"] == f"{package['name']}@{package['version']}"
        for name, digest in package["files"].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, f"{folder.name}/{name}"
            listed.add(f"{package['dir']}/{name}")
    present = {str(p.relative_to(VENDOR)) for p in VENDOR.rglob("*") if p.is_file()}
    assert present == listed, "files in web/static/vendor/ that the manifest does not list (or lacks)"


def test_each_package_carries_its_licence_and_its_own_package_json() -> None:
    for package in manifest():
        folder = VENDOR / package["dir"]
        meta = json.loads((folder / "package.json").read_text())
        assert (meta["name"], meta["version"], meta["license"]) == (
            package["name"],
            package["version"],
            package["license"],
        )
        licence = (folder / "LICENSE").read_text()
        assert package["license"] == "MIT" and "Permission is hereby granted, free of charge" in licence
        assert package["integrity"].startswith("sha512-")  # npm's check of the tarball


def test_the_refresh_script_pins_what_is_vendored() -> None:
    pinned = refresh_script().PACKAGES
    assert {name: version for name, (version, _) in pinned.items()} == {
        p["name"]: p["version"] for p in manifest()
    }
    for package in manifest():
        files = {Path(f).name for f in pinned[package["name"]][1]} | {"LICENSE", "package.json"}
        assert files == set(package["files"])


def own_files() -> list[Path]:
    return [p for p in STATIC.rglob("*") if p.is_file() and VENDOR not in p.parents]


def test_the_page_loads_only_files_that_exist_here_and_nothing_from_another_host() -> None:
    vendored = {f"{p['dir']}/{name}" for p in manifest() for name in p["files"]}
    references = 0
    for path in own_files():
        source = path.read_text()
        assert not re.search(
            r"""(src|href)\s*=\s*["']https?://|import[^;]*["']https?://|url\(\s*["']?https?://""", source
        ), f"{path.name} loads something from another host"
        for ref in re.findall(r"""["']((?:/static/|\.\./|\./)[^"']+\.(?:js|css))["']""", source):
            base = STATIC if ref.startswith("/static/") else path.parent
            target = (base / ref.removeprefix("/static/")).resolve()
            assert target.is_file(), f"{path.name} refers to {ref}, which does not exist"
            if VENDOR in target.parents:
                assert str(target.relative_to(VENDOR)) in vendored
            references += 1
    assert references >= 6  # the page, its stylesheet, its modules and both libraries


@pytest.mark.parametrize("name", ["socket.io.esm.min.js", "uPlot.esm.js"])
def test_the_libraries_are_es_modules_with_their_licence_header(name: str) -> None:
    path = next(VENDOR.rglob(name))
    source = path.read_text()
    assert re.search(r"^export\s*\{", source, re.M) or "export{" in source
    assert "MIT" in source[:400]
