#!/usr/bin/env python3
"""Refresh the console's vendored JavaScript (web/static/vendor/) from the npm registry.

Each package in PACKAGES is fetched with `npm pack NAME@VERSION` (npm checks the tarball's
integrity), and the files the console loads are copied, unmodified, with the package's
LICENSE and package.json, to web/static/vendor/NAME@VERSION/. The manifest
(web/static/vendor/manifest.json) records name, version, licence, the tarball's integrity and
each file's sha256; tests/test_vendor.py checks it against the files. Nothing is built: the
files are plain ES modules and CSS, loaded as they are.

Usage: scripts/vendor_js.py            re-vendor the pinned versions
       scripts/vendor_js.py --check    exit 1 if the committed files differ from npm's
To move to a new release, change its version below and run the script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "web" / "static" / "vendor"
MANIFEST = VENDOR / "manifest.json"

#: name -> (version, files taken from the package, relative to its root)
PACKAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    # the ESM bundle (engine.io-client, socket.io-parser and component-emitter inside, all MIT)
    "socket.io-client": ("4.8.4", ("dist/socket.io.esm.min.js", "dist/socket.io.esm.min.js.map")),
    "uplot": ("1.6.32", ("dist/uPlot.esm.js", "dist/uPlot.min.css")),
}
ALWAYS = ("LICENSE", "package.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def npm_pack(name: str, version: str, into: Path) -> tuple[Path, str]:
    """Download NAME@VERSION's tarball into `into`; returns (tarball, npm's integrity)."""
    out = subprocess.run(
        ["npm", "pack", f"{name}@{version}", "--json", "--pack-destination", str(into)],
        check=True,
        capture_output=True,
        text=True,
    )
    info = json.loads(out.stdout)[0]
    return into / info["filename"], info["integrity"]


def unpack(name: str, version: str, files: tuple[str, ...], work: Path, dest: Path) -> dict[str, object]:
    """Copy `files` (+ LICENSE, package.json) of NAME@VERSION into `dest`; its manifest entry."""
    tarball, integrity = npm_pack(name, version, work)
    extracted = work / name.replace("/", "_")
    with tarfile.open(tarball) as archive:
        archive.extractall(extracted, filter="data")
    package = extracted / "package"
    meta = json.loads((package / "package.json").read_text())
    if meta["version"] != version:
        raise SystemExit(f"{name}: npm gave version {meta['version']}, expected {version}")
    if dest.exists():
        shutil.rmtree(dest)
    for relative in (*ALWAYS, *files):
        target = dest / Path(relative).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package / relative, target)
    return {
        "name": name,
        "version": version,
        "license": meta["license"],
        "integrity": integrity,
        "dir": dest.name,
        "files": {p.name: sha256(p) for p in sorted(dest.iterdir())},
    }


def build(into: Path) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        return [
            unpack(name, version, files, Path(tmp), into / f"{name}@{version}")
            for name, (version, files) in PACKAGES.items()
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with npm instead of writing")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = build(Path(tmp))
        committed = json.loads(MANIFEST.read_text())["packages"]
        if fresh != committed:
            print("web/static/vendor differs from npm's packages: run scripts/vendor_js.py", file=sys.stderr)
            return 1
        print("web/static/vendor matches npm")
        return 0
    for stale in VENDOR.glob("*@*"):
        shutil.rmtree(stale)
    packages = build(VENDOR)
    MANIFEST.write_text(json.dumps({"packages": packages}, indent=2) + "\n")
    for entry in packages:
        print(f"vendored {entry['name']}@{entry['version']} ({entry['license']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
